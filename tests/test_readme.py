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
    import threading

    from tests.fedsllm.telemetry.helpers import served_run

    text = section("Watching a run")
    snippet = re.search(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert snippet is not None
    code = snippet.group(1)
    placeholder = 'Path("runs/default-20261201-120000")'
    assert placeholder in code
    run_dir = tmp_path / "run"
    with served_run(run_dir) as run:
        run.push((0, 1))
        closer = threading.Timer(1.0, run.collector.close)  # the fed server stopping
        closer.start()
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(code.replace(placeholder, f"Path({str(run_dir)!r})"), {})  # noqa: S102
        finally:
            closer.cancel()
    lines = out.getvalue().splitlines()
    assert [line.split()[:4] for line in lines] == [
        ["0", "client_0", "train_loss", "0"],
        ["1", "client_0", "train_loss", "0"],
    ]
