"""The client's Train stream on grpc.aio (fedsllm.wire.train_client, used by
client.remote.MainServerStream): statuses reach the caller as the server
sent them, also when the call ended while a step was still being written;
a clean end and a cut-off reply are told apart; pacing gates each message.
(Its credentials: tests/fedsllm/security/test_train_stream_identity.py.)"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator

import grpc
import pytest
import torch

from fedsllm.errors import WireError
from fedsllm.proto import main_server_pb2_grpc
from fedsllm.security.identity import Identity, caller_or_none
from fedsllm.wire.messages import StepHeaderInfo, StepResultInfo, TrainHelloInfo, TrainWelcomeInfo
from fedsllm.wire.rpc import Security
from fedsllm.wire.status import status_code, status_details
from fedsllm.wire.tensors import TensorSpec, tensor_to_frame
from fedsllm.wire.train import (
    step_download_responses,
    step_upload_requests,
)
from fedsllm.wire.train_client import LOST_STATUS, AioLink, TrainCall
from tests.fedsllm.wire.test_rpc import _RpcError as _SyncError
from tests.loopback import main_server_address

HELLO = TrainHelloInfo(client_id=0, scenario_hash="h", wire_dtype="float32")
CHUNK = 4096


class Refusing(main_server_pb2_grpc.MainServerServicer):
    """Welcomes the client, then refuses its step at the step's first message,
    while the client is still writing the rest."""

    def Train(self, request_iterator, context):  # noqa: N802 - generated name
        next(request_iterator)
        yield TrainWelcomeInfo(client_id=0, scenario_hash="h", max_tensor_bytes=2**24)
        next(request_iterator)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "step refused: bad activations")


class EndsEarly(main_server_pb2_grpc.MainServerServicer):
    """Welcomes the client, then ends the call cleanly (OK) at the step's first
    message, while the client is still writing the rest."""

    def Train(self, request_iterator, context):  # noqa: N802 - generated name
        next(request_iterator)
        yield TrainWelcomeInfo(client_id=0, scenario_hash="h", max_tensor_bytes=2**24)
        next(request_iterator)


class Garbled(main_server_pb2_grpc.MainServerServicer):
    """Welcomes the client, then answers its step with bytes the Train codec
    cannot decode."""

    def Train(self, request_iterator, context):  # noqa: N802 - generated name
        next(request_iterator)
        yield TrainWelcomeInfo(client_id=0, scenario_hash="h", max_tensor_bytes=2**24)
        for part in request_iterator:
            if part.end:
                yield b"\xff\xff\xff not a Train response"
                break


class Holding(main_server_pb2_grpc.MainServerServicer):
    """Welcomes the client, takes its step and never answers (until the call ends)."""

    def Train(self, request_iterator, context):  # noqa: N802 - generated name
        next(request_iterator)
        yield TrainWelcomeInfo(client_id=0, scenario_hash="h", max_tensor_bytes=2**24)
        ended = threading.Event()
        context.add_callback(ended.set)
        ended.wait(30)


class Echo(main_server_pb2_grpc.MainServerServicer):
    """Welcomes the client and answers each step with its activations as the
    gradient, until the client ends its uplink or `steps` steps are
    answered; with `cut`, the last reply stops short of its last message.
    Records each call's caller (None without identity)."""

    def __init__(self, steps: int = 100, cut: bool = False, fill: float = 0.0) -> None:
        self.steps = steps
        self.cut = cut
        self.fill = fill
        """The value of every gradient element sent back."""
        self.callers: list[Identity | None] = []

    def Train(self, request_iterator, context):  # noqa: N802 - generated name
        self.callers.append(caller_or_none())
        next(request_iterator)
        yield TrainWelcomeInfo(client_id=0, scenario_hash="h", max_tensor_bytes=2**24)
        for step in range(self.steps):
            parts = []
            for part in request_iterator:
                parts.append(part)
                if part.end:
                    break
            if not parts:
                return  # the client ended its uplink
            acts = torch.full((2, 4, 8), self.fill)
            result = StepResultInfo(
                round=0,
                step=step,
                loss=1.0,
                num_tokens=8,
                server_compute_s=0.0,
                tensor_names=("activations_grad",),
            )
            replies = list(
                step_download_responses(result, [tensor_to_frame("activations_grad", acts)], 64)
            )
            if self.cut and step == self.steps - 1:
                yield from replies[:-1]
                return
            yield from replies


def _specs(_result: StepResultInfo) -> list[TensorSpec]:
    return [TensorSpec("activations_grad", frozenset({"float32"}))]


def _step(step: int, numel: int = 64 * CHUNK // 4) -> list:
    header = StepHeaderInfo(
        round=0, step=step, mode="train", downlink_bps=0.0, tensor_names=("activations",)
    )
    frames = [tensor_to_frame("activations", torch.ones(numel))]
    return list(step_upload_requests(header, frames, CHUNK))


@pytest.fixture
def link() -> Iterator[AioLink]:
    made: list[AioLink] = []

    def open_link(address: str, security: Security | None = None) -> AioLink:
        made.append(AioLink(address, security))
        return made[-1]

    yield open_link  # type: ignore[misc]
    for one in made:
        one.close()


def test_a_refusal_while_the_step_is_written_reaches_the_caller_with_its_code(link) -> None:
    """The server refuses the step at its first message while the client still
    writes 63 more. gRPC's aio client loses that status to a failed write
    (LOST_STATUS, grpc/grpc#36066) whenever its loop takes the status first;
    the caller still gets the server's code and details, every time."""
    with main_server_address(Refusing()) as address:
        aio = link(address)
        seen = []
        for _ in range(20):
            call = TrainCall(aio, _specs)
            call.open(HELLO)
            written = call.send(_step(0))
            with pytest.raises(grpc.RpcError) as info:
                call.receive()
            seen.append((written, status_code(info.value), status_details(info.value)))
    assert {(code, details) for _, code, details in seen} == {
        (grpc.StatusCode.INVALID_ARGUMENT, "step refused: bad activations")
    }, seen
    assert not all(written for written, _, _ in seen), "no write met the ended call"
    assert LOST_STATUS not in {(code, details) for _, code, details in seen}


def test_steps_then_a_clean_end_then_a_cut_off_reply(link) -> None:
    """Each step's reply comes back whole; a server that ends the call cleanly
    gives None, one that ends it inside a reply a WireError naming the step."""
    with main_server_address(Echo(steps=2)) as address:
        call = TrainCall(link(address), _specs)
        assert isinstance(call.open(HELLO), TrainWelcomeInfo)
        for step in range(2):
            assert call.send(_step(step))
            reply = call.receive()
            assert reply is not None and reply.result.step == step
            assert torch.equal(reply.tensor("activations_grad"), torch.zeros(2, 4, 8))
        assert call.receive() is None
    with main_server_address(Echo(1, cut=True)) as address:
        call = TrainCall(link(address), _specs)
        call.open(HELLO)
        call.send(_step(0))
        with pytest.raises(WireError, match="stream ended inside the reply to step 0"):
            call.receive()


def test_a_pace_lets_each_message_go_and_needs_every_size(link) -> None:
    """With a pace, each message is written only after pace(size, first) returns;
    a pace without one size per message is refused before anything is sent."""
    with main_server_address(Echo()) as address:
        call = TrainCall(link(address), _specs)
        call.open(HELLO)
        requests = _step(0)
        paced: list[tuple[int, bool]] = []
        sizes = list(range(100, 100 + len(requests)))
        assert call.send(requests, sizes, lambda n, first: paced.append((n, first)))
        assert paced == [(n, i == 0) for i, n in enumerate(sizes)]
        assert call.receive() is not None
        with pytest.raises(ValueError, match="one size per message"):
            call.send(_step(1), sizes[:-1], lambda n, first: None)


def test_a_link_per_stream_each_on_its_own_loop(link) -> None:
    """Two streams in one thread, each on its own link and loop, take turns."""
    with main_server_address(Echo()) as address:
        calls = [TrainCall(link(address), _specs) for _ in range(2)]
        for call in calls:
            call.open(HELLO)
        for step in range(3):
            for call in calls:
                call.send(_step(step, numel=32))
            for call in calls:
                reply = call.receive()
                assert reply is not None and reply.result.step == step


def test_status_helpers_read_sync_and_aio_errors() -> None:
    """status_code/status_details read a grpc.aio error (not a grpc.Call) as
    they read a sync one; anything else has no code."""
    aio = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone"
    )
    assert not isinstance(aio, grpc.Call)
    assert (status_code(aio), status_details(aio)) == (grpc.StatusCode.UNAVAILABLE, "gone")
    sync = _SyncError(grpc.StatusCode.UNAVAILABLE, "gone")
    assert (status_code(sync), status_details(sync)) == (grpc.StatusCode.UNAVAILABLE, "gone")
    assert (status_code(ValueError("x")), status_details(ValueError("x"))) == (None, "x")


def test_a_clean_end_while_the_step_is_written_is_the_streams_end(link) -> None:
    """The server ends the call with OK at the step's first message: the step
    is not answered, and receive says the stream ended (None), as a sync
    call's iterator did, not an error whose code is OK."""
    with main_server_address(EndsEarly()) as address:
        aio = link(address)
        for _ in range(10):
            call = TrainCall(aio, _specs)
            call.open(HELLO)
            call.send(_step(0))
            assert call.receive() is None


def test_a_reply_the_codec_cannot_decode_is_a_wire_error(link) -> None:
    """grpc.aio hands the caller None for a message its deserializer could not
    decode (after logging it): that is a WireError, not an AttributeError."""
    with main_server_address(Garbled()) as address:
        call = TrainCall(link(address), _specs)
        call.open(HELLO)
        call.send(_step(0, numel=32))
        with pytest.raises(WireError, match="could not decode"):
            call.receive()


def test_an_interrupt_while_waiting_leaves_no_read_behind(link) -> None:
    """A KeyboardInterrupt (a signal) that lands while the loop waits for the
    reply ends the wait: the read it left is cancelled with the call, so a
    later receive reports the cancelled call instead of hanging, and the link
    closes at once."""

    raised: list[type[BaseException]] = [KeyboardInterrupt, TimeoutError]

    def interrupt(_signum, _frame):  # type: ignore[no-untyped-def]
        raise raised.pop(0)  # first the interrupt, then the watchdog's timeout

    with main_server_address(Holding()) as address:
        aio = link(address)
        call = TrainCall(aio, _specs)
        call.open(HELLO)
        call.send(_step(0, numel=32))
        previous = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with pytest.raises(KeyboardInterrupt):
                call.receive()
            signal.setitimer(signal.ITIMER_REAL, 10.0)  # a hang ends in TimeoutError
            with pytest.raises(grpc.RpcError) as info:
                call.receive()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert status_code(info.value) == grpc.StatusCode.CANCELLED


def test_links_close_without_disturbing_another_loop(link, caplog) -> None:
    """Closing a link whose call is still open, while another link's loop keeps
    working, lets that call's last events land on its own loop before it
    closes: no "Event loop is closed" error reaches another loop's log."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    with main_server_address(Echo(steps=300)) as address:
        steady = TrainCall(link(address), _specs)
        steady.open(HELLO)
        for step in range(300):  # the first form logged 0-3 errors in 30, 11 in 300
            other = AioLink(address)
            call = TrainCall(other, _specs)
            call.open(HELLO)
            call.send(_step(0, numel=32))
            other.close()  # the call still open: cancelled by the close
            steady.send(_step(step, numel=32))
            assert steady.receive() is not None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_lost_status_that_comes_first_is_waited_out() -> None:
    """The other order of grpc/grpc#36066: the failed write's LOST_STATUS is the
    call's first status, and core's own replaces it a few loop turns later;
    the caller gets core's own."""

    class Call:
        """A finished call whose status is LOST_STATUS for its first `turns`
        reads of code(), then core's own."""

        def __init__(self, turns: int) -> None:
            self.turns = turns
            self.status = LOST_STATUS

        async def code(self):  # type: ignore[no-untyped-def]
            self.turns -= 1
            if self.turns < 0:
                self.status = (grpc.StatusCode.UNAVAILABLE, "Socket closed")
            return self.status[0]

        async def details(self):  # type: ignore[no-untyped-def]
            return self.status[1]

        async def initial_metadata(self):  # type: ignore[no-untyped-def]
            return grpc.aio.Metadata()

        async def trailing_metadata(self):  # type: ignore[no-untyped-def]
            return grpc.aio.Metadata()

        async def debug_error_string(self):  # type: ignore[no-untyped-def]
            return ""

    aio = AioLink("127.0.0.1:1")  # never dialled: the call is a stand-in
    try:
        call = TrainCall.__new__(TrainCall)
        call._link = aio
        call._call = Call(turns=5)  # type: ignore[assignment]
        call._first_status = grpc.aio.AioRpcError(
            LOST_STATUS[0], grpc.aio.Metadata(), grpc.aio.Metadata(), LOST_STATUS[1]
        )
        status = aio.run(call._real_status())
    finally:
        aio.close()
    assert (status.code(), status.details()) == (grpc.StatusCode.UNAVAILABLE, "Socket closed")


def test_closing_after_a_refused_reply_cancels_quietly() -> None:
    """A reply the client refuses (a NaN gradient) raises from receive_reply;
    closing the stream after it cancels the call (the step is still in
    flight: there is nothing to finish) and raises nothing, so the caller's
    own error is the one that shows."""
    from client.remote import MainServerStream

    with main_server_address(Echo(fill=float("nan"))) as address:
        stream = MainServerStream(address, 0, "h", "float32", CHUNK)
        acts = torch.zeros(2, 4, 8)
        stream.send_step(0, 0, True, acts, torch.ones(2, 4, dtype=torch.int64), torch.ones(2, 4))
        with pytest.raises(WireError, match="activations_grad"):
            stream.receive_reply(0, 0)
        stream.close()
    assert stream._link.loop.is_closed()
