"""Servers, channels, health and retry through a real gRPC server on port 0."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterable

import grpc
import pytest
import torch

from fedsllm.errors import WireError
from fedsllm.proto import controller_pb2, fed_server_pb2, main_server_pb2, main_server_pb2_grpc
from fedsllm.wire import rpc
from fedsllm.wire.adapters import read_adapter_chunks
from fedsllm.wire.messages import StepHeaderInfo, StepResultInfo, TrainHelloInfo
from fedsllm.wire.tensors import (
    Chunk,
    TensorSpec,
    chunk_to_proto,
    frame_to_chunks,
    tensor_to_frame,
)
from fedsllm.wire.train import (
    TRAIN_METHOD,
    StepDownload,
    encode_train_request,
    read_downlink,
    step_upload_requests,
    train_call,
    train_request,
)

from ._echo import ECHO_ADAPTER

NAMES = ("activations", "attention_mask", "labels")


def _grad_specs(result: StepResultInfo) -> list[TensorSpec]:
    return [TensorSpec("activations_grad", frozenset({"float32", "bfloat16"}))]


class _ProtobufQueue(rpc.RequestQueue):
    """What a peer speaking plain protobuf sends: every item in its envelope."""

    def put(self, msg: object, timeout_s: float | None = None) -> None:
        super().put(_enveloped(msg), timeout_s)

    def put_all(self, msgs: Iterable[object]) -> None:
        super().put_all(_enveloped(msg) for msg in msgs)


def _enveloped(msg: object) -> main_server_pb2.TrainRequest:
    if isinstance(msg, main_server_pb2.TrainRequest):
        return msg
    return train_request(msg)  # type: ignore[arg-type]


def _open_train(
    address: str, client: str = "codec"
) -> tuple[grpc.Channel, rpc.RequestQueue, object]:
    """A Train stream with the project's chunk codec, or through the generated
    stub (protobuf's own serializers), which must read and write the same bytes."""
    channel = rpc.make_channel(address)
    if client == "codec":
        requests = rpc.RequestQueue()
        responses = train_call(channel)(requests, timeout=60)
    else:
        requests = _ProtobufQueue()
        responses = main_server_pb2_grpc.MainServerStub(channel).Train(requests, timeout=60)
    requests.put(TrainHelloInfo(client_id=0, scenario_hash="h", wire_dtype="float32"))
    return channel, requests, responses


def test_service_names_match_the_protos() -> None:
    assert main_server_pb2.DESCRIPTOR.services_by_name["MainServer"].full_name == (
        rpc.MAIN_SERVER_SERVICE
    )
    assert fed_server_pb2.DESCRIPTOR.services_by_name["FedServer"].full_name == (
        rpc.FED_SERVER_SERVICE
    )
    assert controller_pb2.DESCRIPTOR.services_by_name["Controller"].full_name == (
        rpc.CONTROLLER_SERVICE
    )


def test_health_reports_serving(echo_server: str) -> None:
    rpc.wait_healthy(echo_server, timeout_s=10)
    rpc.wait_healthy(echo_server, timeout_s=10, service=rpc.MAIN_SERVER_SERVICE)
    with pytest.raises(TimeoutError, match="not SERVING 'fedsllm.proto.Nope'"):
        rpc.wait_healthy(echo_server, timeout_s=0.3, service="fedsllm.proto.Nope")


def test_wait_healthy_times_out_naming_the_address() -> None:
    address = f"127.0.0.1:{rpc.free_port()}"
    with pytest.raises(TimeoutError, match=address):
        rpc.wait_healthy(address, timeout_s=0.3)


@pytest.mark.parametrize("client", ["codec", "protobuf"])
def test_large_tensors_cross_intact(echo_server: str, client: str) -> None:
    channel, requests, responses = _open_train(echo_server, client)
    try:
        downlink = read_downlink(responses, _grad_specs)
        welcome = next(downlink)
        assert welcome.client_id == 0
        # About 20 MB of activations, bigger than gRPC's 4 MiB default message limit.
        acts = torch.randn(5, 256, 4096, generator=torch.Generator().manual_seed(1))
        frames = [
            tensor_to_frame("activations", acts),
            tensor_to_frame("attention_mask", torch.ones(5, 256, dtype=torch.int64)),
            tensor_to_frame("labels", torch.zeros(5, 256, dtype=torch.int64)),
        ]
        header = StepHeaderInfo(round=0, step=0, mode="train", downlink_bps=0.0, tensor_names=NAMES)
        requests.put_all(step_upload_requests(header, frames, 2**20))
        reply = next(downlink)
        assert isinstance(reply, StepDownload)
        assert reply.result.num_tokens == 5 * 256
        assert reply.result.loss == pytest.approx(float(acts.mean()), rel=1e-5)
        assert torch.equal(reply.tensor("activations_grad"), acts * 2)
        # A second step on the same stream, in eval mode: no tensors back.
        eval_header = StepHeaderInfo(
            round=0, step=1, mode="eval", downlink_bps=0.0, tensor_names=NAMES
        )
        small = [
            tensor_to_frame("activations", acts[:1, :8]),
            tensor_to_frame("attention_mask", torch.ones(1, 8, dtype=torch.int64)),
            tensor_to_frame("labels", torch.zeros(1, 8, dtype=torch.int64)),
        ]
        requests.put_all(step_upload_requests(eval_header, small, 2**20))
        reply = next(downlink)
        assert reply.result.step == 1 and reply.frames == {}
        requests.close()
        assert next(downlink, None) is None
    finally:
        channel.close()


@pytest.mark.parametrize("client", ["codec", "protobuf"])
def test_malformed_upload_ends_stream_with_invalid_argument(echo_server: str, client: str) -> None:
    channel, requests, responses = _open_train(echo_server, client)
    try:
        downlink = read_downlink(responses, _grad_specs)
        next(downlink)
        header = StepHeaderInfo(round=0, step=0, mode="train", downlink_bps=0.0, tensor_names=NAMES)
        requests.put(train_request(header))
        bad = tensor_to_frame("activations", torch.tensor([[[float("nan")]]]))
        for chunk in frame_to_chunks(bad, 2**20):
            requests.put(train_request(chunk))
        with pytest.raises(grpc.RpcError) as info:
            next(downlink)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "activations.data: 1 non-finite value(s)" in info.value.details()
    finally:
        requests.close()
        channel.close()


def _raw_train(address: str, messages: list[bytes]) -> grpc.RpcError:
    """Send ready-made bytes on Train; the error the stream ends with."""
    with rpc.make_channel(address) as channel:
        call = channel.stream_stream(
            TRAIN_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        with pytest.raises(grpc.RpcError) as info:
            for _ in call(iter(messages), timeout=10):
                pass
    return info.value


HELLO_BYTES = train_request(
    TrainHelloInfo(client_id=0, scenario_hash="h", wire_dtype="float32")
).SerializeToString()


@pytest.mark.parametrize(
    ("message", "code", "needle"),
    [
        # Bytes protobuf cannot parse: gRPC's own status for a failed deserializer,
        # as with the generated protobuf deserializer.
        (b"\x1a\x05\x0a\x03ab", grpc.StatusCode.INTERNAL, "deserializing"),
        (b"\x1a\x03\x32\x7f\x00", grpc.StatusCode.INTERNAL, "deserializing"),
        (b"\xff\xff", grpc.StatusCode.INTERNAL, "deserializing"),
        # The same for a message whose first byte says StepPart: every kind is
        # decoded by the deserializer (a reader decoding parts itself ended such
        # a call UNKNOWN, from the handler).
        (b"\x2a", grpc.StatusCode.INTERNAL, "deserializing"),
        (b"\x2a\x02\x12\x05", grpc.StatusCode.INTERNAL, "deserializing"),
        # Well-formed protobuf but no oneof field.
        (b"", grpc.StatusCode.INVALID_ARGUMENT, "no field of the oneof"),
        # A chunk with no step header before it.
        (
            main_server_pb2.TrainRequest(
                chunk=chunk_to_proto(
                    next(frame_to_chunks(tensor_to_frame("labels", torch.ones(2)), 64))
                )
            ).SerializeToString(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "outside a step",
        ),
    ],
)
def test_malformed_bytes_refused_with_protobuf_statuses(
    echo_server: str, message: bytes, code: grpc.StatusCode, needle: str
) -> None:
    err = _raw_train(echo_server, [HELLO_BYTES, message])
    assert err.code() == code, err.details()
    assert needle in err.details()


def test_corrupted_repeat_of_a_known_message_ends_internal(echo_server: str) -> None:
    """A message as long as a part the server has read, but with a byte of its
    framing broken, is not taken for that part: it is decoded, and ends the
    call as any undecodable message does."""
    frames = [
        tensor_to_frame("activations", torch.randn(1, 4, 256)),
        tensor_to_frame("attention_mask", torch.ones(1, 4, dtype=torch.int64)),
        tensor_to_frame("labels", torch.zeros(1, 4, dtype=torch.int64)),
    ]
    header = StepHeaderInfo(round=0, step=0, mode="train", downlink_bps=0.0, tensor_names=NAMES)
    parts = [encode_train_request(p) for p in step_upload_requests(header, frames, 1024)]
    assert len(parts) == 4
    broken = bytearray(parts[1])
    broken[2] ^= 0x7F  # the envelope's length: no longer the message's
    err = _raw_train(echo_server, [HELLO_BYTES, *parts[:2], bytes(broken)])
    assert err.code() == grpc.StatusCode.INTERNAL, err.details()
    assert "deserializing" in err.details()


def test_server_adapter_stream(echo_server: str) -> None:
    with rpc.make_channel(echo_server) as channel:
        stub = main_server_pb2_grpc.MainServerStub(channel)
        chunks = stub.GetServerAdapter(main_server_pb2.GetServerAdapterRequest(), timeout=10)
        assert read_adapter_chunks(chunks) == ECHO_ADAPTER


def test_bind_conflict_raises_oserror(echo_server: str) -> None:
    with pytest.raises(OSError, match="cannot bind"):
        rpc.create_server(echo_server, [], allow_unauthenticated=True)


def test_a_port_in_use_is_refused_in_a_word(echo_server: str) -> None:
    """The roles name the flag with this reason ("--bind: address in use, got ...");
    gRPC itself only says "Failed to bind"."""
    with pytest.raises(rpc.BindError) as err:
        rpc.create_server(echo_server, [], allow_unauthenticated=True)
    assert (err.value.address, err.value.reason) == (echo_server, "address in use")
    assert str(err.value) == f"cannot bind gRPC server to {echo_server}: address in use"
    assert rpc.bind_problem(echo_server) == "address in use"


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1:0", None),  # any free port
        ("unix:/tmp/nowhere.sock", None),  # not a TCP address: gRPC decides
        ("192.0.2.1:5000", "not an address of this host"),  # TEST-NET-1 (RFC 5737)
        ("no-such-host.invalid:5000", "cannot resolve host 'no-such-host.invalid'"),
    ],
)
def test_bind_problem_says_why_in_a_few_words(address: str, problem: str | None) -> None:
    found = rpc.bind_problem(address)
    assert found == problem or (problem is not None and found.startswith(problem))


def test_a_free_port_is_no_bind_problem() -> None:
    assert rpc.bind_problem(f"127.0.0.1:{rpc.free_port()}") is None


class _Flaky:
    def __init__(self, failures: int, code: grpc.StatusCode) -> None:
        self.failures, self.code, self.calls = failures, code, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise _RpcError(self.code)
        return "ok"


class _RpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str = "test") -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self):  # pragma: no cover - unused
        return None

    def trailing_metadata(self):  # pragma: no cover - unused
        return None

    def is_active(self) -> bool:  # pragma: no cover - unused
        return False

    def time_remaining(self):  # pragma: no cover - unused
        return None

    def cancel(self) -> bool:  # pragma: no cover - unused
        return False

    def add_callback(self, callback) -> bool:  # pragma: no cover - unused
        return False


def test_call_with_retry_backs_off_then_succeeds() -> None:
    sleeps: list[float] = []
    fn = _Flaky(3, grpc.StatusCode.UNAVAILABLE)
    assert rpc.call_with_retry(fn, attempts=5, base_delay_s=0.1, sleep=sleeps.append) == "ok"
    assert fn.calls == 4
    assert sleeps == pytest.approx([0.1, 0.2, 0.4])


def test_call_with_retry_gives_up_and_skips_other_codes() -> None:
    sleeps: list[float] = []
    fn = _Flaky(10, grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(grpc.RpcError):
        rpc.call_with_retry(fn, attempts=3, base_delay_s=1.0, max_delay_s=1.5, sleep=sleeps.append)
    assert fn.calls == 3 and sleeps == [1.0, 1.5]
    fn = _Flaky(1, grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(grpc.RpcError):
        rpc.call_with_retry(fn, attempts=3, sleep=sleeps.append)
    assert fn.calls == 1


class _Clock:
    """A fake monotonic clock that only the fake sleep moves."""

    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds

    def __call__(self) -> float:
        return self.t


def test_retry_budget_spent_raises_a_clear_error() -> None:
    clock = _Clock()
    heard: list[tuple[str, float]] = []
    policy = rpc.RetryPolicy(
        seed=0,
        base_s=1.0,
        cap_s=4.0,
        jitter=0.0,
        budget_s=10.0,
        sleep=clock.sleep,
        clock=clock,
        on_retry=lambda call, wait_s: heard.append((call, wait_s)),
    )
    fn = _Flaky(1000, grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(rpc.ReconnectError, match=r"^Join: still UNAVAILABLE after 7 s") as info:
        policy.call("Join", fn)
    # 1 + 2 + 4 = 7 s waited; the next 4 s would end past the 10 s budget.
    assert clock.sleeps == [1.0, 2.0, 4.0] and fn.calls == 4
    assert heard == [("Join", 1.0), ("Join", 2.0), ("Join", 4.0)]
    assert isinstance(info.value.__cause__, grpc.RpcError)


HANDSHAKE = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls handshake "
    "failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:"
    "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate"
)
REFUSED = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: refused"


class _Failing:
    """Fails with UNAVAILABLE and each of `details` in turn, then succeeds."""

    def __init__(self, details: list[str]) -> None:
        self.details = list(details)

    def __call__(self) -> str:
        if self.details:
            raise _RpcError(grpc.StatusCode.UNAVAILABLE, self.details.pop(0))
        return "ok"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_an_outage_is_said_once_at_warning_while_it_is_retried(caplog) -> None:
    clock = _Clock()
    policy = rpc.RetryPolicy(
        base_s=1.0, cap_s=1.0, jitter=0.0, budget_s=300.0, sleep=clock.sleep, clock=clock
    )
    with caplog.at_level(logging.INFO, logger="fedsllm.wire.rpc"):
        assert policy.call("Join", _Failing([REFUSED] * 5)) == "ok"
    assert _warnings(caplog) == [
        f"Join: peer unreachable (UNAVAILABLE: {REFUSED}); retrying with backoff for up to "
        "300 s until it answers"
    ]
    assert len(clock.sleeps) == 5  # every retry still happened (at INFO)


def test_a_failing_tls_handshake_is_named_with_what_to_check(caplog) -> None:
    clock = _Clock()
    policy = rpc.RetryPolicy(
        base_s=1.0, cap_s=1.0, jitter=0.0, budget_s=None, sleep=clock.sleep, clock=clock
    )
    with caplog.at_level(logging.WARNING, logger="fedsllm.wire.rpc"):
        assert policy.call("Train", _Failing([REFUSED, REFUSED, HANDSHAKE, HANDSHAKE])) == "ok"
    unreachable, handshake = _warnings(caplog)  # once each, not once per retry
    assert unreachable.startswith("Train: peer unreachable")
    assert handshake == (
        f"Train: TLS handshake with the peer fails ({HANDSHAKE}): the peer's certificate and "
        "this role's must come from the CA given with --tls-ca (FEDSLLM_TLS_CA); retrying "
        "with backoff until it answers"
    )


def test_retry_budget_is_per_outage_and_other_codes_pass() -> None:
    clock = _Clock()
    policy = rpc.RetryPolicy(
        base_s=1.0, cap_s=1.0, jitter=0.0, budget_s=2.5, sleep=clock.sleep, clock=clock
    )
    assert policy.call("Join", _Flaky(2, grpc.StatusCode.UNAVAILABLE)) == "ok"
    assert policy.call("Join", _Flaky(2, grpc.StatusCode.UNAVAILABLE)) == "ok"  # a fresh budget
    fn = _Flaky(1, grpc.StatusCode.FAILED_PRECONDITION)
    with pytest.raises(grpc.RpcError):
        policy.call("Join", fn)
    assert fn.calls == 1


def test_retry_waits_are_seeded_so_clients_spread_out() -> None:
    def waits(seed: int) -> list[float]:
        clock = _Clock()
        policy = rpc.RetryPolicy(seed=seed, base_s=1.0, cap_s=8.0, sleep=clock.sleep, clock=clock)
        policy.call("Train", _Flaky(4, grpc.StatusCode.UNAVAILABLE))
        return clock.sleeps

    assert waits(3) == waits(3)
    assert waits(3) != waits(4)
    assert all(0.5 * 2**i <= w <= 2**i for i, w in enumerate(waits(3)))  # jitter 0.5


def test_channels_find_a_restarted_server_within_seconds() -> None:
    # gRPC's own reconnect backoff grows to 120 s by default: a channel that
    # failed for a minute would then leave a restarted server unused for as long.
    options = dict(rpc.CHANNEL_OPTIONS)
    assert options["grpc.max_reconnect_backoff_ms"] <= 5_000


def test_unary_call_retries_until_server_appears(caplog) -> None:
    """...and names the method in what it logs (the trial saw "call: peer unreachable")."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = rpc.free_port()
    address = f"127.0.0.1:{port}"
    holder: list[grpc.Server] = []

    def start_later() -> None:
        server, _ = rpc.create_server(address, [], allow_unauthenticated=True)
        holder.append(server)

    timer = threading.Timer(0.3, start_later)
    timer.start()
    try:
        with rpc.make_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            assert rpc.method_name(stub.Check) == "Check"
            with caplog.at_level(logging.INFO, logger="fedsllm.wire.rpc"):
                reply = rpc.unary_call(
                    stub.Check,
                    health_pb2.HealthCheckRequest(),
                    timeout_s=1.0,
                    attempts=8,
                    base_delay_s=0.1,
                )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        said = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
        assert said and all(m.startswith("Check: ") for m in said), said
    finally:
        timer.join()
        for server in holder:
            rpc.stop_server(server, 0.1)


def test_request_queue_order_and_close() -> None:
    q = rpc.RequestQueue()
    q.put(0)
    q.put_all([1, 2, 3])
    q.put_all([])
    q.put(4)
    q.put_all(iter([5, 6]))
    q.close()
    assert list(q) == [0, 1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="closed"):
        q.put(7)
    with pytest.raises(ValueError, match="closed"):
        q.put_all([7])
    with pytest.raises(ValueError, match="closed"):
        q.put_all([])


def test_request_queue_batch_is_one_item_and_errors_stay_with_the_caller() -> None:
    """put_all queues a step as one item (one wake-up of gRPC's sending
    thread), and an error making the messages is raised to the caller, with
    nothing of the batch queued."""
    q = rpc.RequestQueue()
    q.put_all([1, 2, 3])
    assert q._queue.qsize() == 1

    def failing() -> Iterable[int]:
        yield 4
        raise WireError("StepHeader.tensor_names", "bad")

    with pytest.raises(WireError, match="tensor_names"):
        q.put_all(failing())
    q.close()
    assert list(q) == [1, 2, 3]


def test_request_queue_lets_go_of_sent_messages() -> None:
    """A batch's messages are not kept by the queue once taken: a step's parts
    view its tensors, which must not live on until the next step."""
    q = rpc.RequestQueue()

    class Message:
        pass

    first, last = Message(), Message()
    refs = [weakref.ref(first), weakref.ref(last)]
    q.put_all([first, last])
    del first, last
    next(q), next(q)  # taken (by gRPC's sending thread) and dropped
    assert [ref() for ref in refs] == [None, None]


def _waiting(q: rpc.RequestQueue) -> tuple[threading.Thread, threading.Event]:
    """q.wait_sent() on a thread of its own, and the event it sets on return."""
    returned = threading.Event()

    def wait() -> None:
        q.wait_sent()
        returned.set()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, returned


def _consume(q: rpc.RequestQueue, count: int) -> list[object]:
    """What gRPC's sending thread does: take a message, send it, come back
    for the next (here `count` times, on a thread of its own)."""
    taken: list[object] = []
    thread = threading.Thread(target=lambda: taken.extend(next(q) for _ in range(count)))
    thread.start()
    thread.join(10)
    return taken


def test_request_queue_wait_returns_once_the_last_message_is_sent() -> None:
    """The caller's wait before its reply ends when gRPC's sending thread (the
    consumer) comes back for more after the last message put, which it does
    only once that message is sent; not when it takes it."""
    q = rpc.RequestQueue()
    q.wait_sent()  # nothing put: at once
    q.put(0)
    q.put_all([1, 2])
    thread, returned = _waiting(q)
    assert [next(q), next(q), next(q)] == [0, 1, 2]
    assert not returned.wait(0.2)  # message 2 taken, not yet sent
    q.put(3)  # the consumer comes back: 2 is sent, 3 is waited for
    assert _consume(q, 1) == [3]
    assert not returned.wait(0.2)
    back = threading.Thread(target=lambda: next(q, None))  # back for more: 3 is sent
    back.start()
    assert returned.wait(10)
    thread.join(10)
    q.put(4)  # waited for again (`back` takes it, and is never back), until closed
    thread, returned = _waiting(q)
    assert not returned.wait(0.2)
    q.close()
    assert returned.wait(10)
    thread.join(10)
    back.join(10)


def test_request_queue_wait_ends_with_the_call_it_feeds() -> None:
    """gRPC stops taking messages from a call that has ended, so the wait
    must end with the call (RequestQueue.watch), or a caller whose stream
    broke mid-step would wait for ever instead of reading the error."""

    class Call:
        def add_done_callback(self, fn) -> None:
            self.fn = fn

    q = rpc.RequestQueue()
    call = Call()
    q.watch(call)  # type: ignore[arg-type]
    q.put_all([1, 2])
    thread, returned = _waiting(q)
    assert not returned.wait(0.2)
    call.fn(call)
    assert returned.wait(10)
    thread.join(10)


def test_a_broken_stream_ends_the_wait_for_its_untaken_messages(echo_server: str) -> None:
    """Against a real server that ends the stream with an error: messages put
    after that are never sent (gRPC's sending thread may take one batch, then
    quits), and the wait still returns, so the caller reads the error."""
    channel, requests, responses = _open_train(echo_server)
    try:
        requests.watch(responses)  # type: ignore[arg-type]
        requests.put(b"\x2a\x03bad")  # a StepPart that is no protobuf: refused
        with pytest.raises(grpc.RpcError):
            for _ in responses:  # type: ignore[attr-defined]
                pass
        requests.put_all([b"late"] * 3)
        thread, returned = _waiting(requests)
        assert returned.wait(10)
        thread.join(10)
    finally:
        requests.close()
        channel.close()


def test_an_ended_call_lets_its_sending_thread_go(echo_server: str) -> None:
    """gRPC's sending thread waits in the queue for the next message. When the
    watched call ends before anyone closes the queue (here it is cancelled,
    as a refused hello or a broken stream ends it), the thread must get the
    iterator's end and quit, not wait for ever: before, one such thread was
    left behind per stream that ended so."""
    channel = rpc.make_channel(echo_server)
    requests = rpc.RequestQueue()
    before = {thread.ident for thread in threading.enumerate()}  # the channel's are older
    responses = train_call(channel)(requests, timeout=60)
    try:
        requests.watch(responses)
        requests.put(TrainHelloInfo(client_id=0, scenario_hash="h", wire_dtype="float32"))
        requests.wait_sent()  # the sending thread is back, waiting for the next message
        responses.cancel()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # The in-process server's workers (grpc_N, rpc.create_server's pool) stay.
            left = [
                t
                for t in threading.enumerate()
                if t.ident not in before and not t.name.startswith("grpc_")
            ]
            if not left:
                break
            time.sleep(0.05)
        assert [t.name for t in left] == []
    finally:
        requests.close()
        channel.close()


class _Recorder(main_server_pb2_grpc.MainServerServicer):
    """Records what gRPC hands the Train handler, then ends the stream."""

    def __init__(self) -> None:
        self.items: list[object] = []

    def Train(self, request_iterator, context):  # noqa: N802 - generated name
        self.items = list(request_iterator)
        return iter(())


def test_servers_decode_train_chunks_with_the_codec() -> None:
    """Registered with the generated add_..._to_server, the Train handler still
    gets chunks framed by the codec (views into the received bytes), not
    protobuf messages holding copies."""
    recorder = _Recorder()
    server, port = rpc.create_server(
        "127.0.0.1:0",
        [lambda s: main_server_pb2_grpc.add_MainServerServicer_to_server(recorder, s)],
        allow_unauthenticated=True,
    )
    try:
        with rpc.make_channel(f"127.0.0.1:{port}") as channel:
            chunk = next(frame_to_chunks(tensor_to_frame("labels", torch.ones(4)), 64))
            list(train_call(channel)(iter([chunk]), timeout=10))
    finally:
        rpc.stop_server(server, 0.5)
    (item,) = recorder.items
    assert isinstance(item, Chunk) and isinstance(item.data, memoryview)
    assert item == chunk


def test_server_threads_are_no_cap_on_blocked_calls() -> None:
    """Issue 12: a sync server parks one thread per in-flight call, and a pool of
    32 left the 33rd Train stream (or PullGlobal wait) without one: round 0
    waited forever at 32/33. 100 calls that block until all have arrived must
    all be served."""
    num_calls = 100
    arrived = threading.Semaphore(0)
    release = threading.Event()

    def wait(request: bytes, context: grpc.ServicerContext) -> bytes:
        arrived.release()
        release.wait(30)
        return request

    handler = grpc.method_handlers_generic_handler(
        "test.Blocking", {"Wait": grpc.unary_unary_rpc_method_handler(wait)}
    )
    server, port = rpc.create_server(
        "127.0.0.1:0",
        [lambda s: s.add_generic_rpc_handlers((handler,))],
        allow_unauthenticated=True,
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        call = channel.unary_unary("/test.Blocking/Wait")
        futures = [call.future(b"x", timeout=30) for _ in range(num_calls)]
        entered = sum(arrived.acquire(timeout=10) for _ in range(num_calls))
        release.set()
        assert entered == num_calls
        assert all(f.result() == b"x" for f in futures)
    finally:
        release.set()
        channel.close()
        rpc.stop_server(server, grace_s=0.5)


def test_a_peer_token_table_that_is_not_an_object_is_refused_saying_its_shape(tmp_path) -> None:
    """A list gave "unusable token table ('list' object has no attribute 'items')"."""
    from fedsllm.errors import ConfigError
    from fedsllm.wire.rpc import PEER_TOKENS_ENV, security_from_env

    table = tmp_path / "peers.json"
    table.write_text('["client-0-token-of-sixteen+"]')
    with pytest.raises(ConfigError) as err:
        security_from_env({PEER_TOKENS_ENV: str(table)})
    assert err.value.path == PEER_TOKENS_ENV
    assert "must hold a JSON object from identity to token" in err.value.reason
