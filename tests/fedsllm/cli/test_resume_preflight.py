"""`fedsllm run --resume RUN_DIR` reads every store its roles would resume from
before it writes, locks or starts anything: a damaged store is one line naming
the file, exit 2; a run whose every round is done is said to be complete,
exit 0. Either way the run directory is left exactly as it was: every file's
bytes and mtime, every directory's mtime, no file added.

The run directories are made by the stores' own writers (no roles run)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from fedsllm.cli import main
from fedsllm.config import load_scenario
from fedsllm.launch import LOCK_FILE, scenario_hash
from fedsllm.state import ClientStore, FedServerStore, MainServerStore
from fedsllm.state.durable import DurableRounds
from fedsllm.state.store import DiskBackend
from tests.fedsllm.state._blobs import adapter

K, R = 2, 2


def _run(argv: list[str]) -> int:
    return main(["run", "--quiet", "--skip-memory-check", *argv])


def _first(blobs: Sequence[bytes], _weights: Sequence[float]) -> bytes:
    return blobs[0]


def make_run_dir(root: Path, rounds_done: int) -> Path:
    """A run directory of K clients and R rounds as a launch leaves it after
    `rounds_done` rounds (and, before the last, one update of the next):
    scenario.json, the launcher's files, the fed server's
    store (written through DurableRounds), the main server's and each client's
    checkpoint store."""
    run_dir = root / "run"
    for sub in ("logs", "trace", "adapters"):
        (run_dir / sub).mkdir(parents=True)
    scenario = load_scenario(
        None,
        [
            "policy.name='fixed_steps'",
            "model.pretrain_steps=0",
            f"clients.num_clients={K}",
            f"training.num_rounds={R}",
        ],
    )
    doc = {"scenario_hash": scenario_hash(scenario), **scenario.to_dict()}
    (run_dir / "scenario.json").write_text(json.dumps(doc))
    (run_dir / LOCK_FILE).write_text("")
    (run_dir / "logs" / "fed_server.log").write_text("serving\n")
    (run_dir / "summary.json").write_text(json.dumps({"ok": rounds_done == R}))
    (run_dir / "faults.json").write_text(json.dumps({"launches": [{"completed": True}]}))
    (run_dir / "security.txt").write_text("plain gRPC, per-peer tokens\n")
    rounds = DurableRounds.open(
        FedServerStore(DiskBackend(run_dir / "state")),
        num_clients=K,
        num_rounds=R,
        now=0.0,
        aggregate=_first,
    )
    for c in range(K):
        rounds.join(c, 10 + c, 0.0)
    for r in range(rounds_done):
        for c in range(K):
            rounds.submit(c, r, 0, adapter(10 * r + c), 1.0 + r)
        assert rounds.close_if_due(1.0 + r) is not None
    if rounds_done < R:  # interrupted in the open round, client 1's update accepted
        rounds.submit(1, rounds_done, 0, adapter(10 * rounds_done + 1), 1.0 + rounds_done)
    main_store = MainServerStore(DiskBackend(run_dir / "roles" / "main_server" / "state"))
    main_store.save(adapter(1), adapter(2), num_steps=4, num_updates=4, round_index=rounds_done)
    for c in range(K):
        store = ClientStore(DiskBackend(run_dir / "roles" / f"client_{c}" / "state"))
        store.save(max(rounds_done - 1, 0), adapter(3 + c), adapter(5 + c), pushed=True)
    return run_dir


def snapshot(root: Path) -> dict[str, tuple[int, str | None]]:
    """Every path under `root` (and root): its mtime, and a file's bytes' sha256."""
    out = {".": (root.stat().st_mtime_ns, None)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            out[str(path.relative_to(root))] = (path.lstat().st_mtime_ns, digest)
    return out


class _Started(Exception):
    """The launch went past its checks (the stand-in run_processes was called)."""


@pytest.fixture
def no_launch(monkeypatch) -> list[str]:
    """Nothing may start: run_processes and prepare_base raise _Started (a run
    directory the checks pass is launched no further). Returns what was called."""
    import fedsllm.launch
    import fedsllm.progress

    called: list[str] = []

    def refuse(name: str):
        def stand_in(*_args, **_kwargs):
            called.append(name)
            raise _Started(name)

        return stand_in

    monkeypatch.setattr(fedsllm.launch, "run_processes", refuse("run_processes"))
    monkeypatch.setattr(fedsllm.progress, "prepare_base", refuse("prepare_base"))
    return called


def test_resume_of_a_complete_run_says_so_and_changes_nothing(tmp_path, capsys, no_launch) -> None:
    run_dir = make_run_dir(tmp_path, rounds_done=R)
    before = snapshot(run_dir)
    assert _run(["--resume", str(run_dir)]) == 0
    out, err = capsys.readouterr()
    where = run_dir.resolve()
    assert out == (
        f"{where}: the run is already complete ({R} of {R} rounds); nothing to resume — "
        f"see `fedsllm report {where}`\n"
    )
    assert err == ""
    assert no_launch == []
    assert snapshot(run_dir) == before


def test_resume_of_a_complete_run_still_refuses_a_bad_flag(tmp_path, capsys, no_launch) -> None:
    run_dir = make_run_dir(tmp_path, rounds_done=R)
    before = snapshot(run_dir)
    assert _run(["--resume", str(run_dir), "--faults", "explode:client_0@t=1s"]) == 2
    assert capsys.readouterr().err.startswith("fedsllm: error: --faults: ")
    assert snapshot(run_dir) == before


def test_resume_of_an_interrupted_run_with_readable_stores_goes_on(tmp_path, no_launch) -> None:
    run_dir = make_run_dir(tmp_path, rounds_done=1)
    with pytest.raises(_Started):
        _run(["--resume", str(run_dir)])
    assert no_launch == ["prepare_base"]


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


DAMAGED = [
    # (rounds done, the file, how it is damaged, what the message says)
    (R, "state/ledger.json", lambda p: p.write_text('{"format": 1, trunc\n'), "not JSON"),
    (1, "state/ledger.json", _truncate, "not JSON"),
    (1, "state/rounds/r000000.json", _truncate, "not JSON"),
    (R, "state/globals/r000001.safetensors", _truncate, "not a safetensors file"),
    (1, "state/updates/r000001/c00001_a0000.safetensors", _truncate, "not a safetensors file"),
    (1, "roles/main_server/state/checkpoint.json", _truncate, "not JSON"),
    (1, "roles/main_server/state/adapter.00000001.safetensors", _truncate, "not a safetensors"),
    (1, "roles/client_1/state/checkpoint.json", _truncate, "not JSON"),
    (1, "roles/client_0/state/optimizer.00000001.safetensors", _truncate, "not a safetensors"),
]


@pytest.mark.parametrize(
    ("rounds_done", "name", "damage", "words"),
    DAMAGED,
    ids=[f"{name}@{done}" for done, name, _, _ in DAMAGED],
)
def test_resume_of_a_damaged_store_exits_2_naming_the_file_and_changes_nothing(
    tmp_path, capsys, no_launch, rounds_done, name, damage, words
) -> None:
    run_dir = make_run_dir(tmp_path, rounds_done)
    damage(run_dir / name)
    before = snapshot(run_dir)
    assert _run(["--resume", str(run_dir)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    path = run_dir.resolve() / name
    assert lines[0].startswith(f"fedsllm: error: {path}: {words}"), err
    assert "damaged" in lines[0] and "another fedsllm version" not in lines[0], err
    assert no_launch == []
    assert snapshot(run_dir) == before


def test_resume_of_a_store_of_another_version_says_so(tmp_path, capsys, no_launch) -> None:
    run_dir = make_run_dir(tmp_path, rounds_done=1)
    ledger = run_dir / "state" / "ledger.json"
    doc = json.loads(ledger.read_text())
    ledger.write_text(json.dumps({**doc, "format_version": 99}))
    before = snapshot(run_dir)
    assert _run(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fedsllm: error: {ledger.resolve()}: format version 99"), err
    assert "written by another fedsllm version" in err and len(err.strip().splitlines()) == 1
    assert snapshot(run_dir) == before


def test_resume_of_a_ledger_with_a_field_missing_names_it(tmp_path, capsys, no_launch) -> None:
    """A document of the right format whose fields are not the store's: the
    file and the field, not a traceback from the fed server."""
    run_dir = make_run_dir(tmp_path, rounds_done=1)
    ledger = run_dir / "state" / "ledger.json"
    doc = json.loads(ledger.read_text())
    del doc["data"]["members"]
    ledger.write_text(json.dumps(doc))
    before = snapshot(run_dir)
    assert _run(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fedsllm: error: {ledger.resolve()}: no 'members' field"), err
    assert snapshot(run_dir) == before


def test_a_run_dir_without_a_lock_file_gains_none_when_refused(tmp_path, capsys, no_launch) -> None:
    run_dir = make_run_dir(tmp_path, rounds_done=1)
    (run_dir / LOCK_FILE).unlink()
    _truncate(run_dir / "state" / "ledger.json")
    before = snapshot(run_dir)
    assert _run(["--resume", str(run_dir)]) == 2
    assert "ledger.json" in capsys.readouterr().err
    assert snapshot(run_dir) == before
