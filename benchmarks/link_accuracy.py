"""Link shaping accuracy: achieved / target rate per backend, rate and payload,
and how long a live rate change takes to bite.

Prints figures only (no pass/fail). Backends: token (always) and tc (when
root with iproute2; a throwaway NetnsTopology is created and removed).
Each payload is sent once over a real TCP connection; the achieved rate is
payload bits / (time the receiver holds the last byte - time the sender
started). Combinations whose target time exceeds --max-seconds are skipped
and listed (16 MiB at 1 Mbit/s would take 134 s per backend).

    .venv/bin/python benchmarks/link_accuracy.py [--backends token,tc] [--max-seconds 15]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from importlib import metadata

RATES_BPS = (1e6, 10e6, 50e6)
PAYLOADS = (64 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024, 16 * 1024 * 1024)
CHUNK_BYTES = 262144  # link.chunk_bytes default

RECEIVER = r"""
import socket, sys, time
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    n, last = 0, 0.0
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        n += len(data)
        last = time.monotonic()
        if len(sys.argv) > 3:
            print("mark", last, n, flush=True)
    conn.close()
    print("done", last, n, flush=True)
"""

SENDER = r"""
import socket, sys, time
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
t0 = time.monotonic()
sock.sendall(b"\0" * int(sys.argv[3]))
sock.close()
print(t0, flush=True)
"""


def header(args: argparse.Namespace) -> None:
    versions = {p: metadata.version(p) for p in ("fedsllm", "grpcio")}
    params = {"rates": RATES_BPS, "payloads": PAYLOADS, "max_s": args.max_seconds}
    digest = hashlib.sha256(json.dumps(params).encode()).hexdigest()[:12]
    print(f"# link_accuracy  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# host {platform.node()}  {platform.platform()}  cpus={os.cpu_count()}")
    print(f"# python {platform.python_version()}  {versions}  params {digest}")


def combos(max_s: float) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
    run, skip = [], []
    for rate in RATES_BPS:
        for size in PAYLOADS:
            (run if size * 8 / rate <= max_s else skip).append((rate, size))
    return run, skip


def row(backend: str, rate: float, size: int, elapsed: float) -> None:
    achieved = size * 8 / elapsed
    target_s = size * 8 / rate
    print(
        f"{backend:6s} {rate / 1e6:6.0f} {size / 1024:9.0f} {target_s:9.3f} {elapsed:9.3f} "
        f"{achieved / 1e6:9.3f} {achieved / rate:7.4f}"
    )


def table_head() -> None:
    print(
        f"{'backend':6s} {'Mbit/s':>6s} {'KiB':>9s} {'target_s':>9s} {'meas_s':>9s} "
        f"{'ach_Mbps':>9s} {'ratio':>7s}"
    )


# ----------------------------------------------------------------- token


def token_transfer(rate: float, size: int) -> float:
    from fedsllm.link import Direction, TokenShaper, paced

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    result: dict[str, float] = {}

    def receive() -> None:
        conn, _ = srv.accept()
        n = 0
        with conn:
            while n < size:
                data = conn.recv(1 << 20)
                if not data:
                    break
                n += len(data)
        result["last"] = time.monotonic()

    thread = threading.Thread(target=receive)
    thread.start()
    shaper = TokenShaper()
    shaper.set_rates(0, rate, math.inf)
    chunk = min(CHUNK_BYTES, size)
    chunks = [b"\0" * chunk] * (size // chunk)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        t0 = time.monotonic()
        for c in paced(chunks, shaper, 0, Direction.UP):
            sock.sendall(c)
        thread.join(600)
    srv.close()
    return result["last"] - t0


def token_change_delay(old: float, new: float, chunk: int, num: int = 5) -> list[float]:
    """Seconds from set_rates to the start of the first chunk sent at the new rate."""
    from fedsllm.link import Direction, TokenShaper

    delays = []
    for i in range(num):
        shaper = TokenShaper()
        shaper.set_rates(0, old, old)
        releases: list[float] = []
        t_change = [0.0]

        def changer(
            shaper: TokenShaper = shaper, i: int = i, t_change: list[float] = t_change
        ) -> None:
            time.sleep(0.2 + 0.013 * i)  # land at varying points inside a chunk
            t_change[0] = time.monotonic()
            shaper.set_rates(0, new, new)

        th = threading.Thread(target=changer)
        th.start()
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            shaper.pace(0, Direction.UP, chunk)
            releases.append(time.monotonic())
        th.join()
        new_dur = chunk * 8 / new
        # First release after the change whose gap matches the new rate.
        for a, b in zip(releases, releases[1:], strict=False):
            if a >= t_change[0] - 1e-9 and (b - a) < 0.5 * (chunk * 8 / old + new_dur):
                delays.append(max(0.0, b - new_dur - t_change[0]))
                break
    return delays


def run_token(args: argparse.Namespace) -> None:
    run, _ = combos(args.max_seconds)
    for rate, size in run:
        row("token", rate, size, token_transfer(rate, size))
    for chunk in (65536, 262144):
        d = token_change_delay(10e6, 50e6, chunk)
        print(
            f"token  live change 10->50 Mbit/s, {chunk // 1024} KiB chunks: delay median "
            f"{statistics.median(d) * 1e3:.1f} ms, max {max(d) * 1e3:.1f} ms "
            f"(bound: one chunk at the old rate = {chunk * 8 / 10e6 * 1e3:.1f} ms)"
        )


# ----------------------------------------------------------------- tc


def run_tc(args: argparse.Namespace) -> None:
    from fedsllm.link.netns import NetnsTopology

    run, _ = combos(args.max_seconds)
    # A fixed port is free: nothing but this benchmark runs in the namespaces
    # it creates, which are named for this process (two runs never share them).
    port = 5100
    with NetnsTopology(f"bench{os.getpid()}", 1) as topo:
        main_addr = topo.address("main")
        recv = subprocess.Popen(
            topo.exec_prefix("main") + [sys.executable, "-c", RECEIVER, main_addr, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            recv.stdout.readline()
            for rate, size in run:
                topo.set_client_rates(0, rate, math.inf)
                out = subprocess.run(
                    topo.exec_prefix(0)
                    + [sys.executable, "-c", SENDER, main_addr, str(port), str(size)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                t0 = float(out.split()[0])
                _, last, n = recv.stdout.readline().split()
                if int(n) != size:
                    raise RuntimeError(f"received {n} of {size} bytes")
                row("tc", rate, size, float(last) - t0)
        finally:
            recv.kill()
            recv.wait()
        tc_change_delay(topo, port + 1)


def tc_change_delay(topo, port: int) -> None:
    """Change 8 -> 24 Mbit/s mid-transfer; time the command and the receiver's response."""
    main_addr = topo.address("main")
    topo.set_client_rates(0, 8e6, math.inf)
    recv = subprocess.Popen(
        topo.exec_prefix("main") + [sys.executable, "-c", RECEIVER, main_addr, str(port), "m"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        recv.stdout.readline()
        sender = subprocess.Popen(
            topo.exec_prefix(0)
            + [sys.executable, "-c", SENDER, main_addr, str(port), str(5 * 1024 * 1024)],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.5)
            t0 = time.monotonic()
            topo.set_client_rates(0, 24e6, math.inf)
            t1 = time.monotonic()
            sender.wait(60)
        finally:  # a sender still running (a failure above): stopped by its pid
            if sender.poll() is None:
                sender.kill()
                sender.wait()
        marks = []
        for line in recv.stdout:
            parts = line.split()
            if parts[0] == "done":
                break
            marks.append((float(parts[1]), int(parts[2])))
    finally:
        recv.kill()
        recv.wait()
    # Time after the change at which a 100 ms window first runs at >= 90% of 24 Mbit/s.
    bite = math.nan
    for i, (t, n) in enumerate(marks):
        if t < t0:
            continue
        later = [m for m in marks[i:] if m[0] <= t + 0.1]
        if len(later) > 1 and later[-1][0] - t > 0.05:
            r = (later[-1][1] - n) * 8 / (later[-1][0] - t)
            if r >= 0.9 * 24e6:
                bite = t - t0
                break
    print(
        f"tc     live change 8->24 Mbit/s: `tc class change` x2 took {(t1 - t0) * 1e3:.1f} ms; "
        f"receiver at >= 90% of the new rate {bite * 1e3:.0f} ms after the change"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="token,tc", help="comma list (default token,tc)")
    parser.add_argument(
        "--max-seconds", type=float, default=15.0,
        help="skip combos whose target transfer time exceeds this (default 15)",
    )  # fmt: skip
    args = parser.parse_args()
    header(args)
    run, skip = combos(args.max_seconds)
    print(f"# skipped (target > {args.max_seconds:g} s): " + ", ".join(
        f"{s // 1024} KiB @ {r / 1e6:g} Mbit/s" for r, s in skip))  # fmt: skip
    table_head()
    backends = args.backends.split(",")
    if "token" in backends:
        run_token(args)
    if "tc" in backends:
        if os.geteuid() != 0 or shutil.which("tc") is None:
            print("# tc: skipped (needs root and iproute2)")
        else:
            run_tc(args)


if __name__ == "__main__":
    main()
