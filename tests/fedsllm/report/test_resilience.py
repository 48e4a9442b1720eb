"""Faults, restarts, resumes and the audit in RUN_DIR/faults.json, summary.json,
report.md and `fedsllm report`'s output."""

from __future__ import annotations

import dataclasses
import json
import signal
from pathlib import Path

from safetensors.numpy import load, save

from fedsllm.cli import main
from fedsllm.config import load_scenario
from fedsllm.faults import FaultEvent
from fedsllm.launch import (
    RestartRecord,
    RoleFailed,
    RunOutcome,
    read_fault_log,
    write_fault_log,
)
from fedsllm.state.audit import audit_run_dir
from fedsllm.state.store import DiskBackend
from fedsllm.summary import (
    ClientLink,
    RoundSummary,
    RunSummary,
    resilience_lines,
    write_summary,
)
from tests.fedsllm.report.synthetic import make_run_dir, synthetic_records
from tests.fedsllm.state.test_audit import _run as honest_rounds

SCENARIO = load_scenario(None, ["run.restart='on-failure'", "run.faults='kill:client_1@round=1'"])


class _Proc:
    name = "main_server"
    pid = 42
    log_path = Path("main_server.log")


def _outcome(run_dir: Path, *, resumed: bool, failed: bool = False) -> RunOutcome:
    events = [
        FaultEvent(
            0, "kill:client_1@round=1;restart=2s", "SIGKILL client_1 at +0s", 3.0, 3.1, 1,
            label="signal SIGKILL", target="client_1",
        ),
        FaultEvent(
            0, "kill:client_1@round=1;restart=2s", "restart client_1 at +2s", 5.0, 5.2, 1,
            error="RuntimeError: client_1 has finished", label="restart", target="client_1",
        ),
    ]  # fmt: skip
    restarts = [RestartRecord("main_server", -signal.SIGKILL, 7.5, 2, "supervisor", 1, pid=77)]
    return RunOutcome(
        run_dir=run_dir,
        exit_codes={"fed_server": 0},
        failed=RoleFailed(_Proc(), "exited with code 1") if failed else None,  # type: ignore[arg-type]
        wall_s=12.0,
        restarts=restarts,
        fault_events=events,
        faults=[
            {
                "fault": "kill:client_1@round=1;restart=2s",
                "fired_at_s": 3.0,
                "actions": [
                    {"action": e.action, "at_s": e.done_s, "round": e.round, "error": e.error}
                    for e in events
                ],
            }
        ],  # fmt: skip
        resumed=resumed,
        rounds_done=3,
    )


def test_every_launch_is_appended_to_faults_json(tmp_path) -> None:
    write_fault_log(tmp_path, SCENARIO, _outcome(tmp_path, resumed=False, failed=True))
    write_fault_log(tmp_path, SCENARIO, _outcome(tmp_path, resumed=True))
    first, second = read_fault_log(tmp_path)
    assert (first["resumed"], first["completed"], first["failed"]) == (
        False,
        False,
        "main_server: exited with code 1",
    )
    assert (second["resumed"], second["completed"], second["rounds_done"]) == (True, True, 3)
    assert second["restart"] == "on-failure" and second["max_restarts"] == 3
    assert [e["action"] for e in second["events"]] == ["signal SIGKILL", "restart"]
    assert [e["ok"] for e in second["events"]] == [True, False]
    (restart,) = second["restarts"]
    assert (restart["role"], restart["died_of"], restart["round"]) == ("main_server", "SIGKILL", 2)


def test_no_faults_json_is_no_launch(tmp_path) -> None:
    assert read_fault_log(tmp_path) == []
    (tmp_path / "faults.json").write_text("{broken")
    assert read_fault_log(tmp_path) == []


def test_the_lines_list_each_fault_action_restart_resume_and_the_audit(tmp_path) -> None:
    write_fault_log(tmp_path, SCENARIO, _outcome(tmp_path, resumed=False, failed=True))
    write_fault_log(tmp_path, SCENARIO, _outcome(tmp_path, resumed=True))
    lines = resilience_lines(tmp_path)
    assert lines[0].startswith("launch 1 of 2: restart on-failure (at most 3 per role); failed")
    joined = "\n".join(lines)
    assert (
        "resumed 2 of 2: continued from the roles' stores; restart on-failure (at most 3 per "
        "role); completed, 3 rounds done" in joined
    )
    assert (
        "fault kill:client_1@round=1;restart=2s: SIGKILL client_1 at +0s (t=3.1s, round 1): ok"
        in joined
    )
    assert "(t=5.2s, round 1): error: RuntimeError: client_1 has finished" in joined
    assert "restart main_server #1 by supervisor after SIGKILL (t=7.5s, round 2)" in joined
    assert lines[-1].startswith("audit: not run (no state/ in ")
    assert "a run from before state stores" in lines[-1]


def test_the_summary_json_is_strict_json_with_null_for_what_was_not_measured(
    tmp_path,
) -> None:
    """A round not evaluated has no validation loss: null, never NaN, which no
    JSON parser but Python's accepts (JavaScript's JSON.parse refuses the file)."""
    nan = float("nan")
    rounds = [
        RoundSummary(round=0, train_loss=2.5, val_loss=nan, wall_s=1.0, num_clients=3, num_steps=3),
        RoundSummary(round=1, train_loss=2.0, val_loss=1.9, wall_s=1.0, num_clients=3, num_steps=3),
    ]
    link = ClientLink(client=0, allocated_uplink_bps=nan, achieved_uplink_bps=8e6,
                      allocated_bandwidth_hz=nan, overrun_s=0.0)  # fmt: skip
    summary = RunSummary(rounds=rounds, initial_val_loss=2.7, final_val_loss=1.9,
                         total_wall_s=2.0, links=[link])  # fmt: skip
    write_summary(
        tmp_path, _outcome(tmp_path, resumed=False), summary, scenario_name="x", time_dilation=1.0
    )

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    doc = json.loads((tmp_path / "summary.json").read_text(), parse_constant=refuse)
    assert [r["val_loss"] for r in doc["rounds"]] == [None, 1.9]
    assert doc["links"][0]["allocated_uplink_bps"] is None
    assert doc["links"][0]["achieved_uplink_bps"] == 8e6


def test_the_summary_json_records_its_run_dir_absolute(tmp_path, monkeypatch) -> None:
    empty = RunSummary(rounds=[], initial_val_loss=0.0, final_val_loss=0.0, total_wall_s=0.0,
                       links=[])  # fmt: skip
    monkeypatch.chdir(tmp_path.parent)
    relative = Path(tmp_path.name)
    write_summary(
        relative, _outcome(tmp_path, resumed=False), empty, scenario_name="x", time_dilation=1.0
    )
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["run_dir"] == str(tmp_path.resolve())


def test_the_summary_json_carries_faults_restarts_resumes_and_audit(tmp_path) -> None:
    write_fault_log(tmp_path, SCENARIO, _outcome(tmp_path, resumed=True))
    empty = RunSummary(rounds=[], initial_val_loss=0.0, final_val_loss=0.0, total_wall_s=0.0,
                       links=[])  # fmt: skip
    write_summary(
        tmp_path, _outcome(tmp_path, resumed=True), empty, scenario_name="x", time_dilation=1.0
    )
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["resumed"] is True
    assert [(f["action"], f["ok"], f["round"]) for f in doc["faults"]] == [
        ("signal SIGKILL", True, 1),
        ("restart", False, 1),
    ]
    assert [r["role"] for r in doc["restarts"]] == ["main_server"]
    assert doc["audit"]["audited"] is False
    assert len(doc["resilience"]["launches"]) == 1


def _state_on_disk(run_dir: Path) -> bytes:
    """An honest fed server store (tests/fedsllm/state/test_audit.py) copied to
    RUN_DIR/state; returns its final global adapter."""
    store, _ = honest_rounds()
    disk = DiskBackend(run_dir / "state")
    for name in store.backend.names():
        disk.write(name, store.backend.read(name))
    return store.load().global_adapter


def test_audit_of_a_run_dir_says_equal_with_the_max_diff(tmp_path) -> None:
    final = _state_on_disk(tmp_path)
    (tmp_path / "adapters").mkdir()
    (tmp_path / "adapters" / "client_global.safetensors").write_bytes(final)
    audit = audit_run_dir(tmp_path)
    assert audit.ok
    assert audit.line() == (
        "audit OK: 3 rounds, 8 updates, final adapter equals recomputed FedAvg: yes (max diff 0)"
    )


def test_audit_of_a_run_dir_whose_adapter_differs_says_no(tmp_path) -> None:
    final = load(_state_on_disk(tmp_path))
    final["lora_A"] = final["lora_A"] + 0.5
    (tmp_path / "adapters").mkdir()
    (tmp_path / "adapters" / "client_global.safetensors").write_bytes(save(final))
    audit = audit_run_dir(tmp_path)
    assert audit.ok is False
    assert audit.line().startswith("audit FAILED: 3 rounds, 8 updates, final adapter equals ")
    assert ": no (max diff 0.5)" in audit.line()
    assert audit.to_dict()["final_equal"] is False


def test_audit_without_closed_rounds_says_so(tmp_path) -> None:
    (tmp_path / "state").mkdir()
    audit = audit_run_dir(tmp_path)
    assert audit.ok is None and "no closed round recorded" in audit.line()


def test_fedsllm_report_prints_the_audit_and_report_md_lists_the_faults(tmp_path, capsys) -> None:
    run_dir = make_run_dir(tmp_path / "run", synthetic_records())
    write_fault_log(run_dir, SCENARIO, _outcome(run_dir, resumed=True))
    final = _state_on_disk(run_dir)
    (run_dir / "adapters").mkdir()
    (run_dir / "adapters" / "client_global.safetensors").write_bytes(final)
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert (
        "audit OK: 3 rounds, 8 updates, final adapter equals recomputed FedAvg: yes (max diff 0)"
        in out
    )
    assert "restart main_server #1 by supervisor after SIGKILL" in out
    md = (run_dir / "report.md").read_text()
    assert "## Faults, restarts and audit" in md
    assert "- resumed: continued from the roles' stores" in md
    assert "- audit OK: 3 rounds, 8 updates" in md
    doc = json.loads((run_dir / "report.json").read_text())
    assert doc["resilience"]["audit"]["final_equal"] is True


def test_fedsllm_report_of_an_old_run_says_the_audit_was_not_run(tmp_path, capsys) -> None:
    run_dir = make_run_dir(tmp_path / "run", synthetic_records())
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "faults and restarts: none recorded (no faults.json)" in out
    assert "audit: not run (no state/ in " in out


def test_an_interrupted_launch_is_recorded_as_such(tmp_path) -> None:
    """A launch stopped by SIGTERM is listed too, so the resumed run's summary shows
    both launches."""
    interrupted = _outcome(tmp_path, resumed=False)
    interrupted.interrupted = "interrupted by SIGTERM"
    write_fault_log(tmp_path, SCENARIO, interrupted)
    write_fault_log(tmp_path, SCENARIO, _outcome(tmp_path, resumed=True))
    first, _ = read_fault_log(tmp_path)
    assert (first["completed"], first["failed"]) == (False, "interrupted by SIGTERM")
    assert (
        "launch 1 of 2: restart on-failure (at most 3 per role); failed (interrupted by SIGTERM)"
        in (resilience_lines(tmp_path)[0])
    )


def test_counts_of_one_read_singular() -> None:
    """The trial saw "audit OK: 1 rounds", "at most 1 rounds", "1 local steps x 2 rounds"."""
    from fedsllm.cli.run import plan_text
    from fedsllm.config import load_scenario
    from fedsllm.state.audit import AuditResult

    assert AuditResult(num_rounds=1, num_updates=1).lines()[0] == (
        "audit OK: 1 round, 1 accepted update, doubled=0, missing=0"
    )
    scenario = load_scenario(None, ['policy.name="optimal"', "policy.max_rounds=1"])
    assert plan_text(scenario).endswith(
        "(the controller plans rounds and local steps, at most 1 round)"
    )


def test_a_summary_of_a_launch_a_signal_stopped_is_not_ok(tmp_path) -> None:
    """SIGTERM or SIGHUP while the roles ran: no role failed, yet the run did not finish."""
    empty = RunSummary(rounds=[], initial_val_loss=0.0, final_val_loss=0.0, total_wall_s=0.0,
                       links=[])  # fmt: skip
    stopped = dataclasses.replace(
        _outcome(tmp_path, resumed=False), interrupted="interrupted by SIGHUP"
    )
    write_summary(tmp_path, stopped, empty, scenario_name="x", time_dilation=1.0)
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert (doc["ok"], doc["interrupted"], doc["failed"]) == (False, "interrupted by SIGHUP", None)
    write_summary(
        tmp_path, _outcome(tmp_path, resumed=False), empty, scenario_name="x", time_dilation=1.0
    )
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert (doc["ok"], doc["interrupted"]) == (True, None)
