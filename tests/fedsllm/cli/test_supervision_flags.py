"""`fedsllm run --restart / --faults / --resume`: bad values exit 2 naming the flag and
create nothing; good values become the launcher-only scenario fields, which leave
the scenario hash alone."""

from __future__ import annotations

import argparse
import json

import pytest

from fedsllm.cli import build_parser, main
from fedsllm.config import load_scenario
from fedsllm.errors import ConfigError
from fedsllm.launch import scenario_hash


def _run(argv: list[str]) -> int:
    return main(["run", "--quiet", "--skip-memory-check", *argv])


def test_a_bad_restart_policy_exits_2_naming_the_flag(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        _run(["--restart", "always", "--out", str(out)])
    assert err.value.code == 2
    assert "--restart" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("kill:client_1", "expected KIND:TARGET"),
        ("kill:client_7@round=1", "client 7 does not exist"),
        ("explode:client_0@t=1s", "unknown fault kind"),
        ("stop:client_0@round=1", "stop needs for="),
        ("kill:client_0@round=1;restart=soon", "not a duration"),
        ("outage:client_0@round=1;for=2s", "needs run.network = netns"),
    ],
)
def test_a_bad_fault_spec_exits_2_naming_the_flag(tmp_path, capsys, spec, words) -> None:
    out = tmp_path / "run"
    assert _run(["--clients", "2", "--faults", spec, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedsllm: error: --faults: ") and words in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_faults_help_lists_every_kind(capsys) -> None:
    assert _run(["--faults", "help"]) == 0
    text = capsys.readouterr().out
    for kind in ("kill", "stop", "restart", "outage"):
        assert f"{kind}:" in text


@pytest.mark.parametrize(
    ("setting", "path"),
    [
        ("run.faults='kill:client_9@round=1'", "run.faults"),
        ("run.faults='outage:main_server@t=1s;for=1s'", "run.faults"),
        ("run.restart='sometimes'", "run.restart"),
        ("run.max_restarts=-1", "run.max_restarts"),
        ("run.restart_backoff_s=-1.0", "run.restart_backoff_s"),
    ],
)
def test_the_scenario_fields_are_checked_naming_them(setting, path) -> None:
    with pytest.raises(ConfigError) as err:
        load_scenario(None, [setting])
    assert err.value.path == path


def test_an_outage_is_accepted_under_netns() -> None:
    scenario = load_scenario(
        None,
        ["run.network='netns'", "link.backend='tc'", "run.faults='outage:client_0@t=1s;for=2s'"],
    )
    assert scenario.run.faults.startswith("outage:")


def test_restart_and_faults_do_not_change_the_scenario_hash() -> None:
    """They say how the launcher supervises, not what the roles compute: a run
    resumed with other ones is the same run to its roles."""
    plain = load_scenario(None, ["clients.num_clients=2"])
    supervised = load_scenario(
        None,
        [
            "clients.num_clients=2",
            "run.restart='on-failure'",
            "run.max_restarts=7",
            "run.restart_backoff_s=0.1",
            "run.faults='kill:client_1@round=1;restart=1s'",
        ],
    )
    assert scenario_hash(plain) == scenario_hash(supervised)
    other = load_scenario(None, ["clients.num_clients=2", "seed=5"])
    assert scenario_hash(plain) != scenario_hash(other)


def test_restart_flag_is_sugar_for_run_restart() -> None:
    from fedsllm.cli.run import flag_overrides

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    args = sub.choices["run"].parse_args(["--restart", "on-failure"])
    assert flag_overrides(args) == ["run.restart='on-failure'"]


def test_resume_of_a_directory_that_is_not_a_run_exits_2_naming_resume(tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (empty, tmp_path / "absent"):
        assert _run(["--resume", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fedsllm: error: --resume: not a run directory"), err
        assert len(err.strip().splitlines()) == 1
    assert list(empty.iterdir()) == []
    assert not (tmp_path / "absent").exists()


def _nothing_may_start(monkeypatch) -> None:
    """A launch that gets past its checks fails the test at once (no real run)."""
    import fedsllm.launch
    import fedsllm.progress

    def refuse(*_args, **_kwargs):
        raise AssertionError("the launch went on")

    monkeypatch.setattr(fedsllm.launch, "run_processes", refuse)
    monkeypatch.setattr(fedsllm.progress, "prepare_base", refuse)


def test_resume_refuses_flags_that_would_change_the_run(tmp_path, capsys, monkeypatch) -> None:
    _nothing_may_start(monkeypatch)
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    doc = {"scenario_hash": "x", **load_scenario(None).to_dict()}
    (run_dir / "scenario.json").write_text(json.dumps(doc))
    for flags, named in (
        (["--clients", "4"], "--clients"),
        (["--set", "seed=2"], "--set"),
        (["--out", str(tmp_path / "o")], "--out"),
        # Zero is a value given, not a flag left out (0 == False).
        (["--seed", "0"], "--seed"),
        (["--rounds", "0"], "--rounds"),
        (["--local-steps", "0"], "--local-steps"),
        (["--clients", "0"], "--clients"),
    ):
        assert _run(["--resume", str(run_dir), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"fedsllm: error: {named}: cannot be combined with --resume"), err
    assert sorted(p.name for p in run_dir.iterdir()) == ["logs", "scenario.json"]


def test_resume_reads_the_runs_scenario_with_the_new_launcher_flags(tmp_path) -> None:
    """The resumed scenario is the run's, with --restart applied and the earlier
    launch's faults dropped (only --faults given now are injected)."""
    from fedsllm.cli.run import resumed_scenario

    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    scenario = load_scenario(
        None, ["clients.num_clients=2", "seed=9", "run.faults='kill:client_1@round=1'"]
    )
    doc = {"scenario_hash": scenario_hash(scenario), **scenario.to_dict()}
    (run_dir / "scenario.json").write_text(json.dumps(doc))
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    args = sub.choices["run"].parse_args(["--resume", str(run_dir), "--restart", "on-failure"])
    resumed, where = resumed_scenario(args)
    assert where == run_dir.resolve()
    assert (resumed.seed, resumed.clients.num_clients) == (9, 2)
    assert (resumed.run.restart, resumed.run.faults) == ("on-failure", "")
    assert scenario_hash(resumed) == doc["scenario_hash"]


def _a_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    scenario = load_scenario(None, ["policy.name='fixed_steps'", "model.pretrain_steps=0"])
    doc = {"scenario_hash": scenario_hash(scenario), **scenario.to_dict()}
    (run_dir / "scenario.json").write_text(json.dumps(doc))
    return run_dir


class _Started(Exception):
    """Raised by the stand-in run_processes: the launch got as far as the roles."""


def test_a_second_launcher_on_a_live_run_exits_2_and_starts_nothing(
    tmp_path, capsys, monkeypatch
) -> None:
    import os

    import fedsllm.launch
    import fedsllm.progress
    from fedsllm.launch import run_dir_lock

    run_dir = _a_run_dir(tmp_path)
    started: list[object] = []
    monkeypatch.setattr(fedsllm.launch, "run_processes", lambda *a, **k: started.append(a))
    monkeypatch.setattr(fedsllm.progress, "prepare_base", lambda *a, **k: started.append(a))
    with run_dir_lock(run_dir, "--out"):  # the first launcher, still running the run
        assert _run(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedsllm: error: --resume: run directory in use by another launcher")
    assert f"(pid {os.getpid()})" in err and len(err.strip().splitlines()) == 1
    assert started == []


def test_the_launcher_holds_the_run_dir_lock_while_the_roles_run(tmp_path, monkeypatch) -> None:
    """Fresh and resumed alike: while run_processes runs, nobody else can lock."""
    import os

    import fedsllm.launch
    import fedsllm.progress
    from fedsllm.launch import run_dir_lock

    refused: list[str] = []

    def roles_run(_scenario, run_dir, **_kwargs):
        with pytest.raises(ConfigError) as err, run_dir_lock(run_dir, "--resume"):
            pass
        refused.append(err.value.reason)
        raise _Started

    monkeypatch.setattr(fedsllm.launch, "run_processes", roles_run)
    monkeypatch.setattr(fedsllm.progress, "prepare_base", lambda *a, **k: None)
    fresh = tmp_path / "fresh"
    with pytest.raises(_Started):
        _run(["--policy", "fixed_steps", "--set", "model.pretrain_steps=0", "--out", str(fresh)])
    with pytest.raises(_Started):
        _run(["--resume", str(_a_run_dir(tmp_path))])
    assert len(refused) == 2 and all("in use by another launcher" in r for r in refused)
    # Released once the launcher is done with the run, and no pid left in it (it
    # would name a process that is gone); a refused launcher leaves the holder's.
    assert (fresh / "launcher.lock").read_text() == ""
    with run_dir_lock(fresh, "--resume"):
        assert (fresh / "launcher.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(ConfigError), run_dir_lock(fresh, "--resume"):
            pass
        assert (fresh / "launcher.lock").read_text() == f"{os.getpid()}\n"
    assert (fresh / "launcher.lock").read_text() == ""
