"""Soak: many rounds under random faults, bounded in time; nothing may be lost or doubled.

    HF_HUB_OFFLINE=1 python benchmarks/soak.py [--minutes 10] [--clients 3]
        [--rounds 8] [--local-steps 2] [--faults-per-run 3] [--seed 0]

Runs `fedsllm run --restart on-failure --faults SPEC` again and again until
the time budget is spent (a run is started only while at least one run's
worth of time is left; each run is also cut at the budget's end). Each
run's SPEC is drawn from the seed: kill -9 of a client, the main server or
the fed server with a restart 1 s later, a SIGSTOP of a client past the
round deadline, or a clean restart (SIGTERM) of a role, at distinct rounds.
Rounds have a deadline (training.round_deadline_s) and close with at least
K-1 clients, so a stopped client is a straggler, not a stall.

After each run the fed server's store is audited (fedsllm.state.audit):
the final global adapter must equal the FedAvg recomputed from the updates
the rounds recorded. It prints, per run and in total: rounds completed,
faults injected (their signal or cut performed; one whose target was
already down is counted as skipped) and survived (the run exited 0 with a
clean audit), restarts, and updates accepted, refused, lost and
doubled:

- accepted: updates the closed rounds count (the round records);
- refused: pushes the fed server refused (clients' "straggler" events: late,
  round closed, duplicate attempt);
- lost: a push a client was told was accepted (its "push_accepted" event:
  that key, or for "already counted" that client in that round) that no
  round record holds, plus updates the audit found missing;
- doubled: a client counted twice in a round, an update in two rounds, a
  round closed twice (the audit's list).

The goal is lost = 0 and doubled = 0. Figures only: nothing here asserts;
the exit code is 1 when anything was lost or doubled, or a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TINY = [
    "link.backend='none'",
    "link.emulate_compute=false",
    "model.pretrain_steps=0",
    "data.seq_len=32",
    "data.num_train_samples=96",
    "data.num_val_samples=16",
    "training.batch_size=4",
    "training.num_val_batches=1",
    "training.eval_every=1000",
]


@dataclass
class RunFigures:
    spec: str
    exit_code: int
    wall_s: float
    rounds: int = 0
    faults: int = 0
    """Faults injected (their first action performed)."""
    skipped: int = 0
    """Faults whose target was already down when they fired."""
    survived: int = 0
    restarts: int = 0
    accepted: int = 0
    refused: int = 0
    lost: int = 0
    doubled: int = 0
    problems: list[str] = field(default_factory=list)


def draw_spec(rng: random.Random, num_clients: int, num_rounds: int, count: int) -> str:
    """`count` faults at distinct rounds in [1, num_rounds - 2] (round 0 starts
    the run, the last round ends it)."""
    rounds = rng.sample(range(1, max(2, num_rounds - 1)), k=min(count, max(1, num_rounds - 2)))
    faults = []
    for r in sorted(rounds):
        client = f"client_{rng.randrange(num_clients)}"
        kind = rng.choice(["kill_client", "kill_main", "kill_fed", "stop_client", "restart"])
        if kind == "kill_client":
            faults.append(f"kill:{client}@round={r};restart=1s")
        elif kind == "kill_main":
            faults.append(f"kill:main_server@round={r};restart=1s")
        elif kind == "kill_fed":
            faults.append(f"kill:fed_server@round={r};restart=1s")
        elif kind == "stop_client":
            faults.append(f"stop:{client}@round={r};for=4s")
        else:
            role = rng.choice([client, "main_server", "fed_server"])
            faults.append(f"restart:{role}@round={r};after=1s")
    return ",".join(faults)


def _events(out: Path, name: str) -> list[dict]:
    from fedsllm.trace import read_records

    try:
        return [r for r in read_records(out / "trace") if r["name"] == name]
    except (OSError, ValueError):
        return []


def measure(out: Path, fig: RunFigures) -> None:
    """Fill `fig` from the run directory: summary, audit, client events."""
    from fedsllm.state import open_store
    from fedsllm.state.audit import audit_run_dir

    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    faults = summary.get("faults", [])
    fig.restarts = len(summary.get("restarts", []))
    run_audit = audit_run_dir(out)
    audit = run_audit.result
    if audit is None:
        fig.problems.append(run_audit.line())
        return
    records = open_store("fed_server", out / "state").round_records()
    fig.rounds = len(records)
    fig.accepted = sum(len(r["accepted"]) for r in records)
    fig.doubled = len(audit.doubled)
    recorded = {(a["client_id"], a["round"], a["attempt"]) for r in records for a in r["accepted"]}
    counted = {(c, r) for c, r, _ in recorded}
    told_keys, told_rounds = set(), set()
    for event in _events(out, "push_accepted"):
        extra = event["extra"]
        if extra.get("counted_before"):
            # "duplicate": an earlier attempt is what the round counts.
            told_rounds.add((event["client"], event["round"]))
        else:
            told_keys.add((event["client"], event["round"], extra["attempt"]))
    fig.lost = len(audit.missing) + len(told_keys - recorded) + len(told_rounds - counted)
    fig.refused = len(_events(out, "straggler"))
    if audit.mismatched:
        fig.problems += audit.mismatched
    clean = fig.exit_code == 0 and audit.ok
    # A fault is injected when its first action (the signal, the cut) was
    # performed; one whose target was already down (an earlier fault on the
    # same role a moment before) was not injected as specified: skipped.
    first: dict[str, dict] = {}
    for f in faults:
        first.setdefault(f.get("fault", ""), f)
    fig.skipped = sum(1 for f in first.values() if not f.get("ok"))
    fig.faults = len(first) - fig.skipped
    fig.survived = fig.faults if clean else 0


def run_once(args: argparse.Namespace, spec: str, out: Path, timeout_s: float) -> RunFigures:
    sets = [*TINY, "training.round_deadline_s=8.0", f"training.min_clients={args.clients - 1}"]
    cmd = [
        sys.executable, "-m", "fedsllm", "run", "--quiet",
        "--clients", str(args.clients), "--rounds", str(args.rounds),
        "--local-steps", str(args.local_steps), "--policy", "fixed_steps",
        "--restart", "on-failure", "--faults", spec, "--out", str(out),
    ]  # fmt: skip
    for item in sets:
        cmd += ["--set", item]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
        )
        code, tail = proc.returncode, proc.stderr[-1500:]
    except subprocess.TimeoutExpired:
        # subprocess.run killed the launcher; its SIGTERM-less death is what
        # the launcher's own cleanup cannot cover, so say it plainly.
        code, tail = -9, "cut at the time budget"
    fig = RunFigures(spec=spec, exit_code=code, wall_s=time.monotonic() - t0)
    measure(out, fig)
    if code != 0:
        fig.problems.append(f"exit {code}: {tail.strip().splitlines()[-1] if tail else ''}")
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--local-steps", type=int, default=2)
    parser.add_argument("--faults-per-run", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    budget_end = time.monotonic() + args.minutes * 60
    base = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="fedsllm-soak-"))
    base.mkdir(parents=True, exist_ok=True)
    print(
        f"soak: {args.minutes:g} min, K={args.clients}, {args.rounds} rounds x "
        f"{args.local_steps} steps per run, {args.faults_per_run} faults per run, "
        f"seed {args.seed}, runs in {base}"
    )
    figures: list[RunFigures] = []
    longest = 60.0
    while time.monotonic() + longest < budget_end or not figures:
        spec = draw_spec(rng, args.clients, args.rounds, args.faults_per_run)
        out = base / f"run{len(figures):03d}"
        left = max(30.0, budget_end - time.monotonic())
        fig = run_once(args, spec, out, timeout_s=left)
        figures.append(fig)
        longest = max(longest, fig.wall_s)
        print(
            f"run {len(figures):3d}: exit {fig.exit_code:3d} {fig.wall_s:6.1f} s  "
            f"rounds {fig.rounds:3d}  faults {fig.survived}/{fig.faults} survived"
            f"{f' ({fig.skipped} skipped)' if fig.skipped else ''}  "
            f"restarts {fig.restarts}  accepted {fig.accepted}  refused {fig.refused}  "
            f"lost {fig.lost}  doubled {fig.doubled}  [{fig.spec}]",
            flush=True,
        )
        for problem in fig.problems:
            print(f"          {problem}")
    total = {
        k: sum(getattr(f, k) for f in figures)
        for k in (
            "rounds",
            "faults",
            "skipped",
            "survived",
            "restarts",
            "accepted",
            "refused",
            "lost",
            "doubled",
        )
    }
    failed = sum(1 for f in figures if f.exit_code != 0)
    print(
        f"total: {len(figures)} runs ({failed} failed), {total['rounds']} rounds completed, "
        f"{total['faults']} faults injected, {total['survived']} survived "
        f"({total['skipped']} skipped: target already down), "
        f"{total['restarts']} restarts; updates accepted {total['accepted']}, refused "
        f"{total['refused']}, lost {total['lost']}, doubled {total['doubled']}"
    )
    return 1 if total["lost"] or total["doubled"] or failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
