"""Where a Train step's wall time goes, on the critical path, against raw gRPC:
the median moment of each hand-over between client and server, step by step.

    OMP_NUM_THREADS=1 python benchmarks/wire_timeline.py [--steps N]

wire_throughput.py says how much slower than raw gRPC a step is; this says
where. Both processes note when each message passes a point (monotonic
clock, which Linux shares between processes):

- client: each request leaves its serializer (on gRPC's sending thread),
  each reply leaves its deserializer;
- server: each request reaches the handler (after gRPC's deserializer and
  the hand-over between gRPC's thread and the handler's), each reply leaves
  the handler (before gRPC serializes it).

The steps are wire_throughput.py's: "project" is its Session against its
BenchServer (the Train codec, readers and builders), "floor" and "raw" its
RawEcho with and without the one copy per message each side. Three payloads,
at the default chunk size: the 1.57 MB activation echo, the 1.57 MB upload
of wire_throughput.py's table (a) answered by a result alone, and a 1 KiB
step answered by a result alone (what a step costs whatever its size). Variants
alternate step by step, so load on the host hits them alike.

The table gives, per segment, the median duration of each variant and the
project's excess over raw: the segments that take the project longer are
where its code sits on the critical path. The Python a step runs between
payload copies runs with cold caches (each copy of 256 KiB evicts what was
there), so it costs several times what a warm loop times it at.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import torch
import wire_throughput as wt

from fedsllm.wire import rpc
from fedsllm.wire.train import decode_train_response, encode_train_request

EVENTS: list[tuple[str, int]] = []
"""(point, monotonic ns) as messages pass, in this process."""

SEGMENTS = (
    ("client builds, first request serialized", "step", "request serialized"),
    ("upload, to the last request at the handler", "request serialized", "last request at handler"),
    ("server turnaround to the first reply", "last request at handler", "reply produced"),
    ("first reply reaches the client", "reply produced", "reply deserialized"),
    ("rest of the download", "reply deserialized", "last reply deserialized"),
    ("client finishes the step", "last reply deserialized", "end"),
)
"""(label, from point, to point): a point is the first passage of a message,
"last ..." the last one in the step. The raw variants send the mask and
labels as messages of their own (the project packs them with the first
activation chunk), so only the upload as a whole compares."""


def _mark(point: str) -> None:
    EVENTS.append((point, time.monotonic_ns()))


def _marking(point: str) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Wrap a (de)serializer so that it marks `point` when it returns."""

    def wrap(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def marked(arg: Any) -> Any:
            out = fn(arg)
            _mark(point)
            return out

        return marked

    return wrap


def _raw_wrap(fn: Callable[[Any], Any], direction: str) -> Callable[[Any], Any]:
    """RawEcho's wrap: its serializer marks a request, its deserializer a reply."""
    return _marking("request serialized" if direction == "request" else "reply deserialized")(fn)


PROJECT_SERIALIZERS = (
    _marking("request serialized")(encode_train_request),
    _marking("reply deserialized")(decode_train_response),
)
"""fedsllm.wire.train's Train (de)serializers, marking each message."""


def _marked_requests(requests: Iterator[Any]) -> Iterator[Any]:
    """The handler's requests, marked as the handler takes each: after gRPC's
    deserializer and its hand-over to the handler's thread, which sit on the
    path too."""
    for msg in requests:
        _mark("request at handler")
        yield msg


def _marked_replies(replies: Iterator[Any]) -> Iterator[Any]:
    """The handler's replies, marked as each leaves the handler (before gRPC
    serializes it: the serializer's copy counts to the transfer, as the
    client's deserializer's counts to it on the other side)."""
    for msg in replies:
        _mark("reply produced")
        yield msg


class MarkedServer(wt.BenchServer):
    """wire_throughput's BenchServer, marking requests in and replies out."""

    def Train(  # noqa: N802 - generated name
        self, request_iterator: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        return _marked_replies(super().Train(_marked_requests(request_iterator), context))


def _raw_echo(request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    return _marked_replies(wt._raw_echo(_marked_requests(request_iterator), context))


def _serve() -> int:
    """Child mode: serve until stdin closes, then print the marks as JSON."""
    torch.set_num_threads(1)
    server = wt._start_server(MarkedServer(), _raw_echo)
    print(server.bench_port, flush=True)  # type: ignore[attr-defined]
    sys.stdin.read()
    rpc.stop_server(server, 0.5)
    print(json.dumps(EVENTS), flush=True)
    return 0


def _steps(events: list[tuple[str, int]]) -> dict[str, list[dict[str, list[float]]]]:
    """Per variant, per step: point -> the µs since the step's start at which
    each passage happened, in order."""
    out: dict[str, list[dict[str, list[float]]]] = {}
    current: dict[str, list[float]] | None = None
    start = 0
    for point, ns in sorted(events, key=lambda e: e[1]):
        if point.startswith("step "):
            variant = point.removeprefix("step ")
            current, start = {}, ns
            out.setdefault(variant, []).append(current)
            continue
        if current is not None:
            current.setdefault(point, []).append((ns - start) / 1e3)
            if point == "end":
                current = None
    return out


def _segments(step: dict[str, list[float]]) -> list[float] | None:
    """The step's segment durations, µs; None when a point is missing."""

    def at(point: str) -> float | None:
        if point == "step":
            return 0.0
        last = point.startswith("last ")
        times = step.get(point.removeprefix("last "))
        if not times:
            return None
        return times[-1] if last else times[0]

    out = []
    for _, a, b in SEGMENTS:
        ta, tb = at(a), at(b)
        if ta is None or tb is None:
            return None
        out.append(tb - ta)
    return out


def _table(title: str, steps: dict[str, list[dict[str, list[float]]]]) -> None:
    variants = [v for v in ("project", "floor", "raw") if v in steps]
    # Only steps with every point (a step always has them; a missing one would
    # be a bug in the marks, and is left out rather than guessed).
    whole = {v: [st for st in steps[v] if _segments(st) is not None] for v in variants}
    if not all(whole.values()):
        raise RuntimeError(f"{title}: no complete step for some variant")
    per = {v: [_segments(st) for st in whole[v]] for v in variants}
    med = {v: [statistics.median(col) for col in zip(*per[v], strict=True)] for v in variants}
    totals = {v: statistics.median(st["end"][0] for st in whole[v]) for v in variants}
    print(f"\n{title} (median µs over {min(len(whole[v]) for v in variants)} steps)")
    print("| segment | " + " | ".join(variants) + " | project - raw |")
    print("|---|" + "---|" * (len(variants) + 1))
    for i, (label, _, _) in enumerate(SEGMENTS):
        cells = " | ".join(f"{med[v][i]:.0f}" for v in variants)
        print(f"| {label} | {cells} | {med['project'][i] - med['raw'][i]:+.0f} |")
    cells = " | ".join(f"{totals[v]:.0f}" for v in variants)
    print(f"| whole step | {cells} | {totals['project'] - totals['raw']:+.0f} |")


def split_server(
    server: list[tuple[str, int]], cases: list[list[tuple[str, int]]]
) -> list[list[tuple[str, int]]]:
    """The server's marks of each case, the cases' client marks given in the
    order they ran: a case's server marks fall after the previous case's last
    client mark and by its own last (the client marks a step's end after the
    server has answered it)."""
    out = []
    after = -1
    for client in cases:
        until = max(ns for _, ns in client)
        out.append([e for e in server if after < e[1] <= until])
        after = until
    return out


def _run(
    address: str, up: list[int], down: int, mode: str, shape: tuple[int, ...], n: int
) -> list[tuple[str, int]]:
    """Alternate the variants for `n` steps (after a warm-up); the client's
    marks. `up` are the raw variants' tensors in the project's order (mask,
    labels, activations), `down` their reply's bytes."""
    acts = torch.randn(*shape)
    b, t = shape[:2]
    mask = torch.ones(b, t, dtype=torch.int64)
    labels = torch.randint(0, wt.VOCAB, (b, t))
    session = wt.Session(address, wt.DEFAULT_CHUNK, serializers=PROJECT_SERIALIZERS)
    # A channel per variant, as the project's session has (see wire_throughput.bench_echo).
    with rpc.make_channel(address) as raw_channel, rpc.make_channel(address) as floor_channel:
        raw = wt.RawEcho(raw_channel, up, down, wt.DEFAULT_CHUNK, wrap=_raw_wrap)
        floor = wt.RawEcho(floor_channel, up, down, wt.DEFAULT_CHUNK, copies=True, wrap=_raw_wrap)
        variants: dict[str, Callable[[], object]] = {
            "project": lambda: session.run_step(acts, mask, labels, mode),
            "floor": floor.run,
            "raw": raw.run,
        }
        for _ in range(20):
            for fn in variants.values():
                fn()
        EVENTS.clear()
        for _ in range(n):
            for name, fn in variants.items():
                _mark(f"step {name}")
                fn()
                _mark("end")
        events = list(EVENTS)
        raw.close()
        floor.close()
    session.close()
    return events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="steps per variant and payload")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.serve:
        return _serve()
    if ns.steps < 1:
        parser.error(f"--steps: must be >= 1, got {ns.steps}")
    torch.set_num_threads(1)
    child, address = wt.start_child(__file__)
    try:
        acts = wt.UPLOAD_BYTES  # the echo's activations; (b) and (c) are table (a)'s steps,
        # (1, 2, n) with a (1, 2) mask and labels (wire_throughput.bench_stream)
        small = 8 * wt.ECHO_SHAPE[0] * wt.ECHO_SHAPE[1]
        cases = [
            (
                f"(a) {wt.ECHO_SHAPE} fp32 activation echo",
                _run(address, [small, small, acts], acts, "train", wt.ECHO_SHAPE, ns.steps),
            ),
            (
                f"(b) a {acts / 1e6:.2f} MB upload answered by its result",
                _run(address, [16, 16, acts], 16, "eval", (1, 2, acts // 8), ns.steps),
            ),
            (
                f"(c) a {wt.TINY_BYTES} B step answered by its result",
                _run(
                    address,
                    [16, 16, wt.TINY_BYTES],
                    16,
                    "eval",
                    (1, 2, wt.TINY_BYTES // 8),
                    ns.steps,
                ),
            ),
        ]
        child.stdin.close()  # type: ignore[union-attr]
        server_events = json.loads(child.stdout.readline())  # type: ignore[union-attr]
        child.wait(timeout=30)
    finally:
        if child.poll() is None:  # failed or hung: stop it by its own pid
            child.kill()
            child.wait(timeout=30)
    print("# wire timeline: a Train step's critical path against raw gRPC")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, chunk {wt.DEFAULT_CHUNK // 1024} KiB")
    server = [(point, ns) for point, ns in server_events]
    theirs = split_server(server, [client for _, client in cases])
    for (title, client), ours in zip(cases, theirs, strict=True):
        _table(title, _steps(client + ours))
    return 0


if __name__ == "__main__":
    sys.exit(main())
