"""Scale of a whole run on this machine: K clients as real processes.

    HF_HUB_OFFLINE=1 python benchmarks/scale.py [--clients 8 32 64 100]
        [--rounds 2] [--local-steps 3] [--set training.server_update="wave"] ...

For each K it runs `fedsllm run --clients K --policy fixed_steps` (the tiny
default presets; `--policy optimal` runs the controller's plan, its rounds
capped by --rounds through policy.max_rounds) and samples, every 0.5 s, the
PSS of every process of the run (the launcher's descendants, from
/proc/<pid>/smaps_rollup). It prints, per K: wall time, peak total PSS,
marginal PSS per client (the clients' summed PSS at the peak over K; the slope
between two K is printed below the table), the time from the fed server's
start to the last client's join, the main server's steps per second (steps /
worker busy seconds, from its log), the worst client's compute overrun, and
the delay model's mean |error| over rounds (the report's measured against
predicted delay per round), and whether the clients ran the controller's plan
(fedsllm.report.plan_check on the run's telemetry: every client's local steps
per round, applied allocations and per-step downlink rates; "ok" or the number
of mismatches, listed below the table). Headed by host, versions and the
scenario hash of each run. Figures only: nothing here asserts.

Time dilation: link.time_dilation = max(1, 0.3 x K) by default (a 2-core
host for K emulated devices and one main server; measured in the README's
"Many clients on one machine").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import threading
import time
from datetime import datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pss_bytes(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    match = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * 1024 if match else 0


def process_tree(root: int) -> dict[int, tuple[int, str]]:
    """pid -> (ppid, cmdline) of `root` and its descendants."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents[int(entry)] = (ppid, cmd)
    tree = {root: parents.get(root, (0, ""))}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, cmd) in parents.items():
            if ppid in tree and pid not in tree:
                tree[pid] = (ppid, cmd)
                grew = True
    return tree


class Sampler(threading.Thread):
    """Peak total PSS of a process tree, and the clients' share at that peak."""

    def __init__(self, root: int, period_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root, self.period_s = root, period_s
        self.peak_total = 0
        self.peak_clients = 0
        self.peak_num_clients = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            tree = process_tree(self.root)
            host = [pid for pid, (_, cmd) in tree.items() if "client.host" in cmd]
            clients = [pid for pid, (ppid, _) in tree.items() if ppid in host]
            clients += [
                pid
                for pid, (_, cmd) in tree.items()
                if cmd.endswith("-m client") or " -m client " in cmd
            ]
            sizes = {pid: pss_bytes(pid) for pid in tree}
            total = sum(sizes.values())
            if total > self.peak_total:
                self.peak_total = total
                self.peak_clients = sum(sizes[p] for p in clients)
                self.peak_num_clients = len(clients)
            self.done.wait(self.period_s)


def clock_s(line: str) -> float | None:
    match = re.match(r"(\d\d):(\d\d):(\d\d\.\d+)", line)
    if not match:
        return None
    h, m, s = match.groups()
    return int(h) * 3600 + int(m) * 60 + float(s)


def join_s(run_dir: Path) -> float:
    """Fed server's first log line to the last 'client N joined' line."""
    lines = (run_dir / "logs" / "fed_server.log").read_text(errors="replace").splitlines()
    start = next((t for t in map(clock_s, lines) if t is not None), None)
    joins = [clock_s(line) for line in lines if re.search(r"client \d+ joined", line)]
    joins = [t for t in joins if t is not None]
    if start is None or not joins:
        return float("nan")
    return max(joins) - start


def steps_per_s(run_dir: Path) -> float:
    text = (run_dir / "logs" / "main_server.log").read_text(errors="replace")
    match = re.search(r"\(([\d.]+) steps/s\)", text)
    return float(match.group(1)) if match else float("nan")


def delay_error(run_dir: Path) -> tuple[float, float, float]:
    """(mean |error| %, worst round's |error| %, total overrun s) from the report."""
    out = subprocess.run(
        [sys.executable, "-m", "fedsllm", "report", str(run_dir), "--format", "json"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    nan = float("nan")
    try:
        doc = json.loads(out.stdout)
    except ValueError:
        return nan, nan, nan
    totals = doc.get("totals", {})
    try:
        rounds = json.loads((run_dir / "report.json").read_text()).get("rounds", [])
    except (OSError, ValueError):
        rounds = []
    errors = [
        abs(float(r["error_pct"]))
        for r in rounds
        if r.get("complete") and r.get("error_pct") is not None and math.isfinite(r["error_pct"])
    ]
    return (
        float(totals.get("mean_abs_error_pct") or nan),
        max(errors) if errors else nan,
        float(totals.get("overrun_s") or 0.0),
    )


def plan_check(run_dir: Path) -> tuple[str, str]:
    """(column, summary): "ok", "-" (no plan in the trace) or "<n> mismatches";
    the summary is printed below the table."""
    from fedsllm.report.plan_check import check_plan
    from fedsllm.trace import read_telemetry

    try:
        check = check_plan(read_telemetry(run_dir / "trace"))
    except (OSError, ValueError) as err:
        return "unreadable", str(err)
    if check.num_local_steps < 0:
        return "-", ""
    return ("ok" if check.ok else f"{len(check.mismatches)} mismatches"), check.summary()


def run_one(k: int, args: argparse.Namespace, out_root: Path) -> dict[str, float | int | str]:
    run_dir = out_root / f"k{k}"
    cmd = [
        sys.executable, "-m", "fedsllm", "run", "--clients", str(k), "--policy", args.policy,
        "--quiet", "--out", str(run_dir), *args.extra,
    ]  # fmt: skip
    if args.policy == "fixed_steps":
        cmd += ["--rounds", str(args.rounds), "--local-steps", str(args.local_steps)]
    else:
        cmd += ["--set", f"policy.max_rounds={args.rounds}"]
    dilation = max(1.0, args.dilation_per_client * k)
    for item in [*args.set, f"link.time_dilation={dilation}"]:
        cmd += ["--set", item]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.monotonic()
    with open(out_root / f"k{k}.out", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        sampler = Sampler(proc.pid)
        sampler.start()
        code = proc.wait()
        sampler.done.set()
        sampler.join()
    wall = time.monotonic() - t0
    nan = float("nan")
    error, worst, overrun = delay_error(run_dir) if code == 0 else (nan, nan, nan)
    plan, plan_summary = plan_check(run_dir) if code == 0 else ("", "")
    scenario_hash = ""
    with contextlib.suppress(OSError, ValueError, KeyError):
        scenario_hash = json.loads((run_dir / "scenario.json").read_text())["scenario_hash"]
    return {
        "K": k,
        "exit": code,
        "dilation": dilation,
        "wall_s": wall,
        "peak_pss_gb": sampler.peak_total / 1e9,
        "client_pss_mb": sampler.peak_clients / max(1, sampler.peak_num_clients) / 1e6,
        "clients_seen": sampler.peak_num_clients,
        "join_s": join_s(run_dir) if (run_dir / "logs").exists() else float("nan"),
        "steps_per_s": steps_per_s(run_dir) if (run_dir / "logs").exists() else float("nan"),
        "overrun_s": overrun,
        "delay_error_pct": error,
        "worst_round_error_pct": worst,
        "plan": plan,
        "plan_summary": plan_summary,
        "scenario_hash": scenario_hash,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32, 64, 100])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--policy",
        default="fixed_steps",
        help="planning policy (default fixed_steps; another one runs the controller's "
        "plan with policy.max_rounds = --rounds and ignores --local-steps)",
    )
    parser.add_argument("--local-steps", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="scenario override (repeatable)")
    parser.add_argument(
        "--dilation-per-client",
        type=float,
        default=0.3,
        help="link.time_dilation = max(1, this x K): the host has 2 cores for K emulated "
        "devices and one main server (default 0.3; 0 = no dilation)",
    )
    parser.add_argument(
        "--skip-memory-check", dest="extra", action="append_const", const="--skip-memory-check"
    )
    parser.add_argument("--out", default=None, help="where the runs go (default runs/scale-<time>)")
    args = parser.parse_args()
    args.extra = args.extra or []
    out_root = Path(args.out or ROOT / "runs" / f"scale-{datetime.now():%Y%m%d-%H%M%S}")
    out_root.mkdir(parents=True, exist_ok=True)
    versions = {p: metadata.version(p) for p in ("torch", "grpcio", "transformers", "peft")}
    gib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    packages = ", ".join(f"{k} {v}" for k, v in versions.items())
    print(f"# host {platform.node()} {platform.machine()}, {os.cpu_count()} cores, {gib:.0f} GiB;")
    print(f"# python {platform.python_version()}, {packages}")
    sets = " ".join("--set " + s for s in args.set)
    steps = f"--local-steps {args.local_steps}" if args.policy == "fixed_steps" else ""
    print(f"# fedsllm run --policy {args.policy} --rounds {args.rounds}")
    print(f"#   {steps} {sets}; runs under {out_root}")
    header = ("K", "dilation", "exit", "wall s", "peak PSS GB", "PSS/client MB", "join s",
              "steps/s", "overrun s", "delay err %", "worst round %", "plan",
              "scenario")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    rows = []
    for k in args.clients:
        row = run_one(k, args, out_root)
        rows.append(row)
        print(
            f"| {row['K']} | {row['dilation']:g} | {row['exit']} | {row['wall_s']:.0f} | "
            f"{row['peak_pss_gb']:.2f} | "
            f"{row['client_pss_mb']:.0f} | {row['join_s']:.1f} | {row['steps_per_s']:.1f} | "
            f"{row['overrun_s']:.2f} | {row['delay_error_pct']:.1f} | "
            f"{row['worst_round_error_pct']:.1f} | {row['plan']} | {row['scenario_hash']} |",
            flush=True,
        )
    for a, b in zip(rows, rows[1:], strict=False):
        slope = (b["peak_pss_gb"] - a["peak_pss_gb"]) * 1e3 / (b["K"] - a["K"])
        print(f"# marginal peak PSS from K={a['K']} to K={b['K']}: {slope:.0f} MB per client")
    for row in rows:
        if row["plan_summary"]:
            print(f"# K={row['K']} plan check: {row['plan_summary']}")
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
