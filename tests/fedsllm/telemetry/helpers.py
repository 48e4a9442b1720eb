"""Records and transports shared by the telemetry tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedsllm.proto import telemetry_pb2 as pb
from fedsllm.telemetry.codec import record_from_proto
from fedsllm.telemetry.collector import TelemetryCollector
from fedsllm.telemetry.records import TelemetryRecord, make_record


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Return once `predicate()` holds; AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def event(i: int, client: int = 0, role: str = "client") -> TelemetryRecord:
    """A train_loss event whose step is `i`, to tell records apart."""
    return make_record(
        "event",
        "train_loss",
        role,
        source_client=client if role == "client" else -1,
        client=client,
        round=0,
        step=i,
        t0=1000.0 + i,
        t1=1000.0 + i,
        bytes=0,
        extra={"loss": 1.0 / (i + 1), "num_tokens": 8},
    )


class FlakyPush:
    """A push into a collector that can be made to fail (collector unreachable),
    or to store a batch and then fail (the reply is lost)."""

    def __init__(self, collector: TelemetryCollector) -> None:
        self.collector = collector
        self.down = threading.Event()
        self.lose_next_reply = False
        self.num_calls = 0
        self.num_records_sent = 0

    def __call__(self, records: Sequence[pb.TelemetryRecord], final: bool) -> int:
        self.num_calls += 1
        if self.down.is_set():
            raise ConnectionError("collector unreachable")
        decoded = [record_from_proto(m) for m in records]
        self.num_records_sent += len(decoded)
        acked = self.collector.store(decoded, final=final) if decoded else 0
        if not decoded and final:
            acked = self.collector.finish("client_0")
        if self.lose_next_reply:
            self.lose_next_reply = False
            raise ConnectionError("reply lost")
        return acked


@dataclass
class ServedRun:
    """A run directory whose telemetry is served on its unix socket as `python -m
    fed_server` serves it there (the fed server's peer tokens, from the credentials
    `fedsllm run` writes), and a client's token to push records with."""

    run_dir: Path
    collector: TelemetryCollector
    client_token: str

    def push(self, steps: Iterable[int]) -> None:
        """Client 0's train_loss events, one per step, as its telemetry sender sends them."""
        from fedsllm.telemetry import socket_address
        from fedsllm.telemetry.codec import record_to_proto
        from fedsllm.telemetry.service import grpc_push
        from fedsllm.wire.rpc import Security, make_channel

        address = socket_address(self.run_dir)
        assert address is not None
        with make_channel(address, Security(token=self.client_token)) as channel:
            push = grpc_push(channel, "client", 0)
            push([record_to_proto(event(i).numbered(i + 1)) for i in steps], False)


@contextmanager
def served_run(run_dir: Path) -> Iterator[ServedRun]:
    """Serve `run_dir`'s telemetry on its socket until the block ends (skips the test
    when the path is too long for a unix socket); the collector is closed and the
    server stopped however the block ends."""
    import pytest

    from fedsllm.security.identity import Identity, TokenTable
    from fedsllm.security.run_secrets import prepare_run_secrets
    from fedsllm.telemetry import socket_address
    from fedsllm.telemetry.service import TelemetryService, add_to_server
    from fedsllm.wire.rpc import Security, create_server, stop_server

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
    try:
        yield ServedRun(run_dir, collector, tokens.token_for(Identity.client(0)))
    finally:
        collector.close()
        stop_server(server, grace_s=0.1)
