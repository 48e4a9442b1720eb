"""Telemetry through a real gRPC server on loopback: push, subscribe, malformed
input, and the collector restarted in the middle of a run."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import pytest

from fedsllm.proto import telemetry_pb2 as pb
from fedsllm.proto import telemetry_pb2_grpc as pb_grpc
from fedsllm.telemetry.codec import record_to_proto, role_to_proto
from fedsllm.telemetry.collector import TelemetryCollector
from fedsllm.telemetry.sender import TelemetrySender
from fedsllm.telemetry.service import (
    TELEMETRY_SERVICE,
    TelemetryService,
    TelemetryWatcher,
    add_to_server,
    grpc_push,
)
from fedsllm.wire.rpc import create_server, make_channel, stop_server
from tests.fedsllm.telemetry.helpers import event, wait_for


def _serve(collector: TelemetryCollector, address: str = "127.0.0.1:0", service=None):
    service = service or TelemetryService(collector, poll_s=0.05)
    return create_server(
        address,
        [add_to_server(service)],
        service_names=(TELEMETRY_SERVICE,),
        allow_unauthenticated=True,
    )


class DiesAfterStoring(TelemetryService):
    """Once `dying` is set, the next Push stores its batch and then the collector
    goes away before it can answer: the sender must resend what is stored."""

    def __init__(self, collector: TelemetryCollector) -> None:
        super().__init__(collector, poll_s=0.05)
        self.dying = threading.Event()
        self.died = threading.Event()

    def Push(self, request, context):
        reply = super().Push(request, context)
        if self.dying.is_set() and request.records and not self.died.is_set():
            self.collector.close()
            self.died.set()
            context.abort(grpc.StatusCode.UNAVAILABLE, "collector stopped")
        return reply


@pytest.fixture
def served(tmp_path: Path):
    collector = TelemetryCollector(tmp_path / "trace")
    server, port = _serve(collector)
    yield collector, f"127.0.0.1:{port}"
    collector.close()
    stop_server(server, grace_s=0.1)


def test_push_then_watch_from_an_index(served) -> None:
    collector, address = served
    with make_channel(address) as channel:
        push = grpc_push(channel, "client", 0)
        records = [record_to_proto(event(i).numbered(i + 1)) for i in range(5)]
        assert push(records, False) == 5
        assert push(records[:2], True) == 5  # a resend: nothing doubled
    assert len(collector.records()) == 5
    watched = Watched(address, from_index=2)
    try:
        wait_for(lambda: len(watched.steps()) == 3)
        assert watched.steps() == [2, 3, 4]
        with make_channel(address) as channel:
            grpc_push(channel, "client", 0)([record_to_proto(event(5).numbered(6))], False)
        wait_for(lambda: len(watched.steps()) == 4)  # live, after the replay
    finally:
        watched.close()


class Watched:
    """A TelemetryWatcher and the steps of the records it delivered so far."""

    def __init__(self, address: str, from_index: int = 0) -> None:
        self.watcher = TelemetryWatcher(address, from_index=from_index, retry_s=0.05)
        self._steps: list[int] = []

    def steps(self) -> list[int]:
        self._steps.extend(r.step for r in self.watcher.poll())
        return self._steps

    def close(self) -> None:
        self.watcher.close()


@pytest.mark.parametrize(
    ("request_kw", "seq", "code"),
    [
        ({"role": 99}, 1, grpc.StatusCode.INVALID_ARGUMENT),
        ({"role": pb.TELEMETRY_ROLE_MAIN_SERVER}, 1, grpc.StatusCode.INVALID_ARGUMENT),
        ({"role": pb.TELEMETRY_ROLE_CLIENT}, 0, grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["unknown role", "source is not the request's", "seq 0"],
)
def test_malformed_push_is_refused_and_stores_nothing(served, request_kw, seq, code) -> None:
    collector, address = served
    record = record_to_proto(event(0).numbered(seq))
    with make_channel(address) as channel:
        stub = pb_grpc.TelemetryStub(channel)
        request = pb.PushTelemetryRequest(records=[record], source_client=0, **request_kw)
        with pytest.raises(grpc.RpcError) as err:
            stub.Push(request, timeout=5)
    assert err.value.code() == code
    assert collector.records() == []


def test_push_to_a_closed_collector_is_refused_so_the_sender_keeps_it(served) -> None:
    collector, address = served
    collector.close()
    with make_channel(address) as channel, pytest.raises(grpc.RpcError) as err:
        grpc_push(channel, "client", 0)([record_to_proto(event(0).numbered(1))], False)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_collector_restart_mid_run_every_record_arrives_exactly_once(tmp_path: Path) -> None:
    """The issue's test: restart the collector in the middle of a run."""
    trace = tmp_path / "trace"
    collector = TelemetryCollector(trace)
    dying = DiesAfterStoring(collector)
    server, port = _serve(collector, service=dying)
    address = f"127.0.0.1:{port}"
    channel = make_channel(address)
    sender = TelemetrySender(
        grpc_push(channel, "client", 0, timeout_s=1.0),
        tmp_path / "spool",
        "client_0",
        batch_records=16,
        flush_interval_s=0.01,
        backoff_s=0.01,
        max_backoff_s=0.05,
    )
    early = Watched(address)  # watching live from the start, across the restart
    num_records = 900
    produced = threading.Event()
    phase_done = [threading.Event() for _ in range(3)]
    go_on = [threading.Event() for _ in range(3)]

    def training_loop() -> None:  # a record every millisecond, through every phase
        for phase in range(3):
            for i in range(phase * 300, (phase + 1) * 300):
                sender(event(i))
                if i == 150:
                    # The collector goes away in the middle of a push stream,
                    # after storing a batch it never acknowledged: the next push
                    # with records, which the rest of this phase makes certain
                    # (set after the phase, it raced the sender's last flush,
                    # and a sender with nothing left to push never killed it).
                    dying.dying.set()
                time.sleep(0.001)
            phase_done[phase].set()
            go_on[phase].wait(30)
        produced.set()

    loop = threading.Thread(target=training_loop)
    loop.start()
    servers, collectors = [server], [collector]
    try:
        phase_done[0].wait(30)
        assert dying.died.wait(10)
        stop_server(server, grace_s=0.0)
        go_on[0].set()
        phase_done[1].wait(30)  # ... and the loop went on while it was away
        assert len((trace / "client_0.jsonl").read_text().splitlines()) <= 300
        collector = TelemetryCollector(trace)  # a new process: state from the files only
        collectors.append(collector)
        server, _ = _serve(collector, address)
        servers.append(server)
        go_on[1].set()
        phase_done[2].wait(30)
        go_on[2].set()
        produced.wait(30)
        loop.join(30)
        assert sender.close(20.0)
        lines = [json.loads(x) for x in (trace / "client_0.jsonl").read_text().splitlines()]
        assert sorted(r["seq"] for r in lines) == list(range(1, num_records + 1))
        assert sorted(r["step"] for r in lines) == list(range(num_records))
        assert sorted(r.seq for r in collector.records()) == list(range(1, num_records + 1))
        assert sender.num_failed_pushes > 0  # the outage was real
        assert sender.spool_path.stat().st_size == 0
        watched = Watched(address)
        try:
            for w in (watched, early):
                wait_for(lambda w=w: len(w.steps()) >= num_records)
                assert sorted(w.steps()) == list(range(num_records))
        finally:
            watched.close()
    finally:
        # Also when an assertion failed: a server left serving a subscription
        # keeps a worker thread busy, and Python waits for it at exit, so the
        # whole pytest process would hang after its summary.
        for released in go_on:
            released.set()
        loop.join(30)
        sender.close(1.0)
        early.close()
        for open_collector in collectors:
            open_collector.close()
        for open_server in servers:
            stop_server(open_server, grace_s=0.1)
        channel.close()


def test_run_progress_watches_with_the_launchers_token_once_it_exists(tmp_path) -> None:
    """The progress display starts before the run's credentials exist; it reads
    the launcher's token from RUN_DIR/launcher/ once written and follows the
    run's telemetry socket with it (the server accepts nothing else)."""
    import io

    from rich.console import Console

    from fedsllm.config import load_scenario
    from fedsllm.progress import RunProgress
    from fedsllm.security.identity import Identity
    from fedsllm.security.run_secrets import prepare_run_secrets
    from fedsllm.telemetry import socket_address
    from fedsllm.wire.rpc import Security

    run_dir = tmp_path / "run"
    (run_dir / "trace").mkdir(parents=True)
    scenario = load_scenario(None, ["clients.num_clients=1"])
    progress = RunProgress(scenario, run_dir / "trace", Console(file=io.StringIO()))
    with progress:
        progress.update()
        assert progress.watcher is None  # no credentials yet: nothing dialled
        secrets = prepare_run_secrets(
            run_dir,
            ["fed_server", "client_0"],
            {n: run_dir / "roles" / n for n in ("fed_server", "client_0")},
            num_clients=1,
            tls=False,
            insecure=False,
        )
        collector = TelemetryCollector(run_dir / "trace")
        address = socket_address(run_dir)
        assert address is not None
        server, _ = create_server(
            address,
            [add_to_server(TelemetryService(collector, poll_s=0.05))],
            security=Security(tokens=secrets.tokens),
        )
        try:
            progress.update()
            assert progress.watcher is not None
            token = secrets.tokens.token_for(Identity("launcher"))
            assert progress.watcher.security == Security(token=token)
            as_client = Security(token=secrets.tokens.token_for(Identity.client(0)))
            with make_channel(address, as_client) as channel:
                grpc_push(channel, "client", 0)([record_to_proto(event(0).numbered(1))], False)
            seen = []
            wait_for(lambda: bool(seen.extend(progress.watcher.poll()) or seen))
            assert [r.step for r in seen] == [0]
        finally:
            collector.close()
            stop_server(server, grace_s=0.1)


@pytest.mark.parametrize(
    ("who", "role", "source_client", "message"),
    [
        (
            1,
            "client",
            0,
            "client/1 may not push telemetry as client 0: a client acts only as itself",
        ),
        (
            0,
            "main_server",
            -1,
            "client/0 may not push telemetry as main_server: only main_server may",
        ),
        (None, "client", 0, "main_server may not push telemetry: only client may"),
    ],
)
def test_a_push_as_another_source_is_refused_in_plain_words(
    tmp_path: Path, who, role, source_client, message
) -> None:
    """The refusal a client sees in its log (it read "as client as client 0")."""
    from fedsllm.security.identity import Identity
    from tests.fedsllm.security.peers import MAIN, channel_as, serving

    collector = TelemetryCollector(tmp_path / "trace")
    caller = MAIN if who is None else Identity.client(who)
    try:
        with serving([add_to_server(TelemetryService(collector))]) as address:
            stub = pb_grpc.TelemetryStub(channel_as(address, caller))
            request = pb.PushTelemetryRequest(
                role=role_to_proto(role), source_client=source_client, records=[]
            )
            with pytest.raises(grpc.RpcError) as err:
                stub.Push(request, timeout=5)
    finally:
        collector.close()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.value.details() == message


def _open_streams(address: str, who, num: int) -> list:
    """`num` Subscribe streams as `who`, each past its first record (so the
    server holds its slot), in the order opened."""
    from tests.fedsllm.security.peers import channel_as

    streams = []
    for _ in range(num):
        stub = pb_grpc.TelemetryStub(channel_as(address, who))
        stream = stub.Subscribe(pb.SubscribeTelemetryRequest(), timeout=20)
        next(stream)
        streams.append(stream)
    return streams


@pytest.mark.parametrize("role", ["fed_server", "watcher"])
def test_subscribe_streams_are_bounded_per_peer_like_the_other_streams(
    tmp_path: Path, role: str
) -> None:
    """README: servers bound streams per peer (4 per method). Six Subscribe
    streams of one token were all accepted; the fifth is now refused, the
    launcher's own watchers (the progress display and the round tracker) still
    fit beside a peer at its bound, and a closed stream frees its slot."""
    from fedsllm.security.identity import Identity
    from fedsllm.security.limits import DEFAULT_MAX_STREAMS
    from fedsllm.telemetry.service import TelemetryWatcher
    from fedsllm.wire.rpc import Security
    from tests.fedsllm.security.peers import LAUNCHER, TOKENS, channel_as, serving

    who = Identity(role)

    collector = TelemetryCollector(tmp_path / "trace")
    collector.store([event(0).numbered(1)])
    service = TelemetryService(collector, poll_s=0.05)
    held: list = []
    launcher_watchers: list = []
    try:
        with serving([add_to_server(service)]) as address:
            held = _open_streams(address, who, DEFAULT_MAX_STREAMS)
            stub = pb_grpc.TelemetryStub(channel_as(address, who))
            with pytest.raises(grpc.RpcError) as err:
                next(stub.Subscribe(pb.SubscribeTelemetryRequest(), timeout=10))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert err.value.details() == (
                f"Subscribe streams per peer: {role} already holds {DEFAULT_MAX_STREAMS}, "
                f"the limit is {DEFAULT_MAX_STREAMS}"
            )
            # The launcher's two watchers are another peer's slots: both follow.
            launcher = Security(token=TOKENS.token_for(LAUNCHER))
            launcher_watchers = [
                TelemetryWatcher(address, retry_s=0.05, security=launcher) for _ in range(2)
            ]
            for w in launcher_watchers:
                got: list = []
                wait_for(lambda w=w, got=got: bool(got.extend(w.poll())) or bool(got))
                assert [r.step for r in got] == [0] and w.refused is None
            # A stream that ends gives its slot back.
            held.pop().cancel()
            wait_for(lambda: service.limits.snapshot().get(("Subscribe", who), 0) < 4)
            held += _open_streams(address, who, 1)
    finally:
        for stream in held:
            stream.cancel()
        for w in launcher_watchers:
            w.close()
        collector.close()
    wait_for(lambda: service.limits.snapshot() == {})


@pytest.mark.parametrize(
    ("who", "code", "says"),
    [
        (None, "UNAUTHENTICATED", "unknown token"),
        (0, "PERMISSION_DENIED", "client/0 may not watch telemetry"),
    ],
    ids=["unknown token", "a client's token"],
)
def test_a_refused_watcher_says_so_once_and_keeps_the_refusal(
    tmp_path: Path, caplog, who, code, says
) -> None:
    """It retried in silence for ever, poll() returning [] on a wrong token."""
    import logging

    from fedsllm.security.identity import Identity
    from fedsllm.wire.rpc import Security
    from tests.fedsllm.security.peers import STRANGER_TOKEN, TOKENS, serving

    collector = TelemetryCollector(tmp_path / "trace")
    collector.store([event(0).numbered(1)])
    token = STRANGER_TOKEN if who is None else TOKENS.token_for(Identity.client(who))
    caplog.set_level(logging.INFO)
    try:
        with serving([add_to_server(TelemetryService(collector, poll_s=0.05))]) as address:
            watcher = TelemetryWatcher(address, retry_s=0.01, security=Security(token=token))
            try:
                # Several refusals on the server's side...
                wait_for(
                    lambda: sum(r.getMessage().startswith("refused") for r in caplog.records) >= 3
                )
                assert watcher.poll() == []
            finally:
                watcher.close()
    finally:
        collector.close()
    refusal = watcher.refused
    assert refusal is not None
    assert str(refusal).startswith(f"FEDSLLM_TOKEN: the telemetry server at {address} refused it")
    assert code in str(refusal) and says in str(refusal)
    # ... and one warning on the watcher's.
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and r.getMessage().startswith("telemetry watch refused")
    ]
    assert len(warnings) == 1
    assert str(refusal) in warnings[0].getMessage()
