"""`fedsllm watch RUN_DIR`: a run's telemetry as JSON lines, as the read-only
watcher, until the run ends. The run here is a real Telemetry server on the
run's unix socket with the fed server's peer tokens (what `python -m
fed_server` serves there), and credentials from prepare_run_secrets (what
`fedsllm run` writes)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsllm.cli import main
from fedsllm.config import load_scenario
from fedsllm.launch import LOCK_FILE, write_scenario
from fedsllm.telemetry import socket_address
from fedsllm.telemetry.watch import RunGone, watch_run
from tests.fedsllm.telemetry.helpers import ServedRun, served_run, wait_for

CREDENTIAL_VARS = (
    "FEDSLLM_TOKEN",
    "FEDSLLM_TOKEN_FILE",
    "FEDSLLM_TLS_CA",
    "FEDSLLM_TLS_CERT",
    "FEDSLLM_TLS_KEY",
)


@pytest.fixture(autouse=True)
def _no_credentials_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)


def _run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    (run_dir / "trace").mkdir(parents=True)
    write_scenario(run_dir, load_scenario(None, ["clients.num_clients=1"]))
    return run_dir


@pytest.fixture
def run(tmp_path: Path) -> Iterator[ServedRun]:
    with served_run(_run_dir(tmp_path)) as served:
        yield served


@pytest.mark.parametrize("kind", ["missing", "file", "not a run"])
def test_an_invalid_run_dir_is_one_line_naming_it_exit_2(tmp_path: Path, capsys, kind) -> None:
    path = tmp_path / "x"
    if kind == "file":
        path.write_text("")
    elif kind == "not a run":
        path.mkdir()
    assert main(["watch", str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("fedsllm: error: RUN_DIR: ") and str(path) in lines[0]
    assert captured.out == ""


def test_a_run_without_watcher_credentials_is_one_line_naming_run_dir(
    tmp_path: Path, capsys
) -> None:
    run_dir = _run_dir(tmp_path)
    assert main(["watch", str(run_dir)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("fedsllm: error: RUN_DIR: has no watcher/token")


def test_watch_prints_every_record_as_json_until_the_collector_closes(
    run: ServedRun, capsys
) -> None:
    run.push(range(3))
    closer = threading.Timer(1.0, run.collector.close)  # the fed server stopping
    closer.start()
    try:
        assert main(["watch", str(run.run_dir)]) == 0
    finally:
        closer.cancel()
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert {r["source"] for r in records} == {"client_0"}
    assert captured.err == ""


def test_watch_goes_on_while_a_launcher_runs_the_directory(run: ServedRun, capsys) -> None:
    """The fed server's stream ends at a stop fault too: the run is over only
    once no launcher holds RUN_DIR/launcher.lock."""
    lock = run.run_dir / LOCK_FILE
    lock.write_text(f"{os.getpid()}\n")  # a live process, as a running launcher leaves it
    run.push(range(2))
    codes: list[int] = []
    watching = threading.Thread(target=lambda: codes.append(main(["watch", str(run.run_dir)])))
    watching.start()
    try:
        run.collector.close()
        watching.join(1.5)
        assert watching.is_alive()  # the launcher may start the fed server again
    finally:
        lock.write_text("")  # the launcher ended
        watching.join(10)
    assert codes == [0]
    assert [json.loads(x)["step"] for x in capsys.readouterr().out.splitlines()] == [0, 1]


def test_a_refused_token_is_one_line_naming_its_file_exit_2(run: ServedRun, capsys) -> None:
    token_file = run.run_dir / "watcher" / "token"
    token_file.write_text("a-token-this-fed-server-never-issued")
    assert main(["watch", str(run.run_dir)]) == 2
    # (The server runs in this process here: its own log line of the refusal is not ours.)
    lines = [
        line
        for line in capsys.readouterr().err.strip().splitlines()
        if "WARNING fedsllm.security.identity: refused" not in line
    ]
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"fedsllm: error: {token_file}: the telemetry server at unix:{token_file.parents[1]}"
    )
    assert "UNAUTHENTICATED" in lines[0] and "unknown token" in lines[0]


def test_nothing_serving_and_no_launcher_ends_the_watch(run: ServedRun) -> None:
    run.collector.close()
    address = socket_address(run.run_dir)
    assert address is not None
    stopped = run.run_dir / "stopped"
    stopped.mkdir()
    # Another run directory with the same credentials, where nothing serves.
    os.rename(run.run_dir / "watcher", stopped / "watcher")
    (stopped / "scenario.json").write_text((run.run_dir / "scenario.json").read_text())
    with pytest.raises(RunGone, match="no fed server answers at unix:.* and no launcher runs"):
        watch_run(stopped, lambda rec: None, wait_s=0.5, poll_s=0.05)


def test_watch_waits_for_the_fed_server_of_a_starting_run(run: ServedRun) -> None:
    """A fed server that comes up a moment later is followed (records from the first)."""
    seen: list[int] = []
    run.push(range(1))
    done = threading.Event()

    def follow() -> None:
        watch_run(run.run_dir, lambda rec: seen.append(rec.step), wait_s=5.0, poll_s=0.05)
        done.set()

    threading.Thread(target=follow, daemon=True).start()
    wait_for(lambda: seen == [0])
    run.push(range(1, 2))
    wait_for(lambda: seen == [0, 1])
    run.collector.close()
    assert done.wait(10)
