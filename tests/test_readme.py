"""The README promises what a new user meets in the first hour: two set-up commands,
a definition of every policy, every subcommand's cost, and how to get results out
of docker compose. These checks fail when the code grows past what it says."""

from __future__ import annotations

import re
from pathlib import Path

from fedsllm.cli import SUBCOMMANDS
from fedsllm.config import POLICIES

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def section(title: str) -> str:
    """The text of the `## title` section, up to the next `## ` heading."""
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end >= 0 else len(README)]


def test_exactly_two_setup_commands_and_ci_runs_the_second() -> None:
    fresh = section("Fresh machine: two commands")
    commands = [line.strip() for line in fresh.splitlines() if line.startswith("    python3")]
    assert len(commands) == 2
    assert all("torch==2.13.0" in c for c in commands)
    assert commands[0].endswith(".venv/bin/fedsllm run")
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert commands[1] in ci
    # Everything after uses a bare `fedsllm`: the README says how to get it.
    assert ". .venv/bin/activate" in fresh


def test_every_policy_is_defined() -> None:
    policies = section("Emulation: links, devices, the controller")
    defined = set(re.findall(r"^  - `([a-z_]+)`:", policies, flags=re.MULTILINE))
    assert set(POLICIES) <= defined, f"undefined in the README: {set(POLICIES) - defined}"


def test_after_your_first_run_prices_every_command_that_takes_time() -> None:
    after = section("After your first run")
    for command in ("run", "plan", "sweep", "compare", "calibrate", "report", "export"):
        assert f"`fedsllm {command}" in after, command
    assert set(SUBCOMMANDS) >= {"run", "plan", "sweep", "compare", "calibrate"}
    assert "--rounds" in after  # how to shorten


def test_compose_says_how_to_get_the_report_out_and_how_to_start_afresh() -> None:
    compose = section("Docker compose")
    assert "docker compose cp fed-server:/data/run" in compose
    assert "docker compose down -v" in compose
    assert "--exit-code-from" in compose  # named as what not to use


def test_the_downlink_default_is_stated() -> None:
    assert "by default the\n  downlink is not paced" in README


def test_the_memory_example_is_what_the_estimate_says() -> None:
    """The README's refusal is this version's, but for the memory it says is free."""
    from fedsllm.config import load_scenario
    from fedsllm.errors import ConfigError
    from fedsllm.resources import GIB, check_memory, scenario_memory

    example = re.search(r"\$ fedsllm run --clients (\d+)\n((?:    .*\n)+)", README)
    assert example is not None
    said = " ".join(example.group(2).split())
    free = float(re.search(r"but only ([\d.]+) GiB", said).group(1)) * GIB
    scenario = load_scenario(None, [f"clients.num_clients={example.group(1)}"])
    try:
        check_memory(scenario_memory(scenario), free)
    except ConfigError as err:
        assert said == f"fedsllm: error: {err}"
    else:
        raise AssertionError("the README's example run is not refused")


def test_the_watching_snippet_follows_a_run_as_printed(tmp_path: Path) -> None:
    """The Python example of "Watching a run" works as printed, against a run
    directory as `fedsllm run` leaves it: the watcher's token, the fed server's
    telemetry socket (served with the fed server's peer tokens)."""
    import contextlib
    import io
    import json
    import threading

    import pytest

    from fedsllm.security.identity import Identity, TokenTable
    from fedsllm.security.run_secrets import prepare_run_secrets
    from fedsllm.telemetry import socket_address
    from fedsllm.telemetry.codec import record_to_proto
    from fedsllm.telemetry.collector import TelemetryCollector
    from fedsllm.telemetry.service import TelemetryService, add_to_server, grpc_push
    from fedsllm.wire.rpc import Security, create_server, make_channel, stop_server
    from tests.fedsllm.telemetry.helpers import event

    text = section("Watching a run")
    snippet = re.search(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert snippet is not None
    code = snippet.group(1)
    placeholder = 'Path("runs/default-20261201-120000")'
    assert placeholder in code
    run_dir = tmp_path / "run"
    address = socket_address(run_dir)
    if address is None:
        pytest.skip("the temporary directory's path is too long for a unix socket")
    names = ["fed_server", "client_0"]
    prepare_run_secrets(
        run_dir,
        names,
        {n: run_dir / "roles" / n for n in names},
        num_clients=1,
        tls=False,
        insecure=False,
    )
    peers = run_dir / "roles" / "fed_server" / "secrets" / "peers.json"
    tokens = TokenTable.from_identity_map(json.loads(peers.read_text()))
    collector = TelemetryCollector(run_dir / "trace")
    service = TelemetryService(collector, poll_s=0.05)
    server, _ = create_server(address, [add_to_server(service)], security=Security(tokens=tokens))
    closer = threading.Timer(1.0, collector.close)  # the fed server stopping
    try:
        with make_channel(address, Security(token=tokens.token_for(Identity.client(0)))) as ch:
            grpc_push(ch, "client", 0)(
                [record_to_proto(event(i).numbered(i + 1)) for i in (0, 1)], False
            )
        closer.start()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(code.replace(placeholder, f"Path({str(run_dir)!r})"), {})  # noqa: S102
    finally:
        closer.cancel()
        collector.close()
        stop_server(server, grace_s=0.1)
    lines = out.getvalue().splitlines()
    assert [line.split()[:4] for line in lines] == [
        ["0", "client_0", "train_loss", "0"],
        ["1", "client_0", "train_loss", "0"],
    ]
