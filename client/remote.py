"""The client's gRPC side: the Train stream to the main server and the calls to
the fed server, behind the small link interfaces of client/loop.py.

Uplink pacing happens here, before each message is handed to gRPC (the
Train stream's writes: fedsllm.wire.train_client; a push's request
iterator), so no byte reaches the network earlier than the emulated link
allows.

Every call reconnects on UNAVAILABLE under one RetryPolicy (capped
exponential backoff with jitter seeded by the client id, a total budget per
outage: fedsllm.wire.rpc), and resumes where it was: the Train stream opens
a new call, says hello again and re-sends the step whose reply it was
waiting for; a push is retried under the same (client, round, attempt) key (also
when its deadline runs out);
a pull asks again; the allocation follower registers and subscribes again.
The loop above sees none of it, except a "reconnect" trace event per retry.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import torch

from client.loop import PushAck, StepReply, StragglerError
from fedsllm.errors import StateError, WireError
from fedsllm.proto import fed_server_pb2
from fedsllm.proto import fed_server_pb2_grpc as fed_grpc
from fedsllm.wire.adapters import PushHeaderInfo, push_requests, read_pull
from fedsllm.wire.messages import StepHeaderInfo, TrainHelloInfo
from fedsllm.wire.retry import link_timeout_s
from fedsllm.wire.rpc import NO_SECURITY, RetryPolicy, Security
from fedsllm.wire.status import refusal_of, status_code, status_details
from fedsllm.wire.tensors import TensorFrame, TensorSpec, tensor_to_frame
from fedsllm.wire.train import message_bytes, step_upload_requests
from fedsllm.wire.train_client import AioLink, Pace, TrainCall

log = logging.getLogger(__name__)


UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _describe(err: BaseException) -> str:
    """One line for a log: a status's code and details, or the error's text."""
    code = status_code(err)
    if code is not None:
        return f"{code.name}: {status_details(err)}"
    return str(err)


def trace_reconnects(tracer: Any) -> Callable[[str, float], None]:
    """A RetryPolicy.on_retry that records each retry as a "reconnect" event
    (the call and the wait before it) in the client's trace."""

    def report(call: str, wait_s: float) -> None:
        tracer.event("reconnect", call=call, wait_s=wait_s)

    return report


@dataclass
class _InFlight:
    """The step whose reply has not arrived yet: what a reconnect re-sends."""

    header: StepHeaderInfo
    frames: list[TensorFrame]
    train: bool


class MainServerStream:
    """One long-lived bidirectional Train stream (MainServerLink) on grpc.aio
    (fedsllm.wire.train_client: why), re-opened when it breaks. It owns its
    channel to `address`, made with the process's `security` (its TLS
    credentials, or its token on the call)."""

    def __init__(
        self,
        address: str,
        client_id: int,
        scenario_hash: str,
        wire_dtype: str,
        chunk_bytes: int,
        pace_up: Pace | None = None,
        downlink_bps: Callable[[], float] = lambda: 0.0,
        now: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
        security: Security | None = None,
    ) -> None:
        self.client_id = client_id
        self.wire_dtype = wire_dtype
        self.chunk_bytes = chunk_bytes
        self.pace_up = pace_up
        self.downlink_bps = downlink_bps
        self.now = now
        """The run's reference clock (local time + offset to the fed server), used
        to stamp each step so the receiver can measure its one-way transfer."""
        self.retry = retry or RetryPolicy(seed=client_id)
        self.num_reconnects = 0
        """Train calls opened after the first (each a broken stream survived)."""
        self._metadata = (security or NO_SECURITY).call_metadata()
        self._hello = TrainHelloInfo(
            client_id=client_id, scenario_hash=scenario_hash, wire_dtype=wire_dtype
        )
        self._sent_shape: tuple[int, ...] | None = None
        self._sent_downlink_bps = 0.0
        self._inflight: _InFlight | None = None
        self._call: TrainCall | None = None
        self._link = AioLink(address, security)
        try:
            self._connect(None)
        except BaseException:
            self._link.close()
            raise

    # ------------------------------------------------------------- connection
    def _open(self) -> None:
        """One new Train call: hello, then the welcome (RpcError if unreachable)."""
        self._call = TrainCall(self._link, self._reply_specs, metadata=self._metadata)
        self._call.open(self._hello)

    def _discard(self) -> None:
        """Let go of a broken call."""
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _connect(self, broken: grpc.RpcError | None) -> None:
        """Open a Train call, retrying UNAVAILABLE under the policy; after a
        broken stream (`broken`), wait first and re-send the in-flight step."""
        waits = self.retry.waits("Train")
        if broken is not None:
            self._discard()
            waits.wait(broken)
        while True:
            try:
                self._open()
                break
            except grpc.RpcError as err:
                if status_code(err) != UNAVAILABLE:
                    raise
                self._discard()
                waits.wait(err)
        if broken is not None:
            self.num_reconnects += 1
            log.info("client %d: Train stream re-opened", self.client_id)
            if self._inflight is not None:
                step = self._inflight
                header = dataclasses.replace(step.header, sent_unix_s=self.now())
                self._upload(header, step.frames, step.train)

    def _reply_specs(self, _result: Any) -> list[TensorSpec]:
        return [
            TensorSpec(
                "activations_grad",
                frozenset({self.wire_dtype}),
                self._sent_shape,
                require_finite=True,
            )
        ]

    # ------------------------------------------------------------- steps
    def _upload(self, header: StepHeaderInfo, frames: list[TensorFrame], train: bool) -> int:
        requests = list(step_upload_requests(header, frames, self.chunk_bytes))
        sizes = [message_bytes(r) for r in requests]
        assert self._call is not None  # _connect opened one, or raised
        # Evaluation is a measurement instrument, not part of the protocol being
        # emulated: it crosses unshaped, as does an unshaped link. A call that
        # ended while writing is found by receive_reply's read, which reconnects.
        pace = self.pace_up if train else None
        self._call.send(requests, sizes, pace)
        return sum(sizes)

    def send_step(
        self,
        round_index: int,
        step: int,
        train: bool,
        activations: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        initial_adapter: bool = False,
    ) -> int:
        """Send one step; returns once gRPC has taken its last message (paced by
        the emulated uplink for a train step), with the bytes it sent."""
        # The small tensors first: the main server takes them in with the
        # first message (while they fit in a quarter chunk, PART_SLACK; else
        # in messages of their own), while the activations are still on their
        # way, so what it does once the last message is in (and its reply
        # waits on) is one chunk's copy (benchmarks/wire_timeline.py, issue 13).
        frames = [
            tensor_to_frame("attention_mask", attention_mask),
            tensor_to_frame("labels", labels),
            tensor_to_frame("activations", activations.detach(), self.wire_dtype),
        ]
        self._sent_shape = tuple(activations.shape)
        header = StepHeaderInfo(
            round=round_index,
            step=step,
            mode="train" if train else "eval",
            downlink_bps=float(self.downlink_bps()) if train else 0.0,
            tensor_names=tuple(f.name for f in frames),
            sent_unix_s=self.now(),
            initial_adapter=initial_adapter and not train,
        )
        self._sent_downlink_bps = header.downlink_bps
        # The chunks are views of the tensors, encoded as each is written. The
        # frames are kept until the reply is in: a reconnect sends them again,
        # so the tensors must stay as they are until receive_reply returns.
        self._inflight = _InFlight(header, frames, train)
        return self._upload(header, frames, train)

    def receive_reply(self, round_index: int, step: int) -> tuple[StepReply, int]:
        while True:
            assert self._call is not None  # _connect opened one, or raised
            try:
                reply = self._call.receive()
                break
            except grpc.RpcError as err:
                if status_code(err) != UNAVAILABLE:
                    raise
                log.warning(
                    "client %d: Train stream broke waiting for round %d step %d (%s)",
                    self.client_id,
                    round_index,
                    step,
                    _describe(err),
                )
                self._connect(err)
        if reply is None:
            raise WireError(
                "TrainResponse", f"stream ended before the reply to round {round_index} step {step}"
            )
        result = reply.result
        if (result.round, result.step) != (round_index, step):
            raise WireError(
                "StepResult",
                f"answers round {result.round} step {result.step}, "
                f"expected round {round_index} step {step}",
            )
        self._inflight = None
        grad = (
            reply.tensor("activations_grad", torch.float32)
            if "activations_grad" in reply.frames
            else None
        )
        num_bytes = sum(f.num_bytes for f in reply.frames.values())
        return StepReply(
            loss=result.loss,
            num_tokens=result.num_tokens,
            grad=grad,
            server_compute_s=result.server_compute_s,
            downlink_bps=self._sent_downlink_bps,
        ), num_bytes

    def cancel(self) -> None:
        """Drop the stream at once, without finishing it (the server sees the
        call cancelled), and close the channel."""
        try:
            self._discard()
        finally:
            self._link.close()

    def close(self) -> None:
        """End the stream and close the channel. With no step in flight the
        uplink is ended and the call read to its status (the server sees a
        clean end); a step still in flight (the client gave up on its reply,
        or the reply was refused) is cancelled instead, as there is nothing
        left to finish. Closing never raises for the call: a server already
        gone, or a reply malformed, is only logged, so the caller's own error
        (if it is closing after one) is the one that shows."""
        try:
            if self._call is not None and self._inflight is not None:
                self._call.cancel()
            elif self._call is not None:
                self._call.finish()
        except (grpc.RpcError, WireError) as err:
            log.info("client %d: Train stream ended with %s", self.client_id, _describe(err))
        finally:
            self._call = None
            self._link.close()


# ===================================================================== fed server
PUSH_RETRY_ON = (UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
"""Codes a push is sent again on, under the same (client, round, attempt) key:
pushes are idempotent (the fed server replays an accepted key), so a push
whose deadline ran out (a slow link, a server stalled mid-write) or whose
server went away (restarted, or its disk failed: UNAVAILABLE) is retried
under the reconnect budget instead of failing the client."""

PushOutcome = str
"""What a refused push means to the client (push_outcome)."""


def push_outcome(code: grpc.StatusCode | None, reason: str | None) -> PushOutcome:
    """The client's reading of a refused push (fedsllm/wire/status.py's table):
    "rejoin" (the fed server does not know this client: join, push again),
    "straggler" (the round went on without this update: catch up),
    "accepted" (this round already counts an update of this client), or
    "error" (anything else: a real failure)."""
    if code == grpc.StatusCode.FAILED_PRECONDITION and reason == "not_joined":
        return "rejoin"
    if code == grpc.StatusCode.OUT_OF_RANGE:
        return "straggler"
    if code == grpc.StatusCode.ALREADY_EXISTS and reason == "duplicate":
        return "accepted"
    return "error"


class FedServerClient:
    """Join, push and pull against the fed server (FedServerLink)."""

    MAX_REJOINS = 3
    """Joins one push may make after "not joined" before that is an error."""

    def __init__(
        self,
        channel: grpc.Channel,
        client_id: int,
        scenario_hash: str,
        chunk_bytes: int,
        pace_up: Pace | None = None,
        rpc_timeout_s: float = 60.0,
        pull_timeout_s: float = 3600.0,
        uplink_bps: Callable[[], float | None] = lambda: None,
        base_hash: str = "",
        retry: RetryPolicy | None = None,
    ) -> None:
        self.stub = fed_grpc.FedServerStub(channel)
        self.base_hash = base_hash
        """Hash of the frozen base this client built; the fed server refuses a mismatch."""
        self.uplink_bps = uplink_bps
        """The emulated uplink's rate in wall-clock bit/s (None or 0: unshaped): the
        push deadline grows with it (fedsllm.wire.retry.link_timeout_s, floor
        rpc_timeout_s), so a large adapter on a slow link is not cut off."""
        self.client_id = client_id
        self.scenario_hash = scenario_hash
        self.chunk_bytes = chunk_bytes
        self.pace_up = pace_up
        self.rpc_timeout_s = rpc_timeout_s
        self.pull_timeout_s = pull_timeout_s
        """Deadline of one PullGlobal call; one that runs out is asked again."""
        self.retry = retry or RetryPolicy(seed=client_id)
        self.num_samples = 0

    def join(self, num_samples: int) -> tuple[int, int]:
        self.num_samples = num_samples
        request = fed_server_pb2.JoinRequest(
            client_id=self.client_id,
            num_samples=num_samples,
            scenario_hash=self.scenario_hash,
            base_hash=self.base_hash,
        )
        reply = self.retry.call("Join", lambda: self.stub.Join(request, timeout=self.rpc_timeout_s))
        return reply.current_round, reply.num_rounds

    def _paced(self, requests: Iterator[Any]) -> Iterator[Any]:
        for i, request in enumerate(requests):
            if self.pace_up is not None:
                self.pace_up(request.ByteSize(), i == 0)
            yield request

    def push_timeout_s(self, nbytes: int) -> float:
        return link_timeout_s(nbytes, self.uplink_bps(), floor_s=self.rpc_timeout_s)

    def push_adapter(self, round_index: int, blob: bytes, attempt: int = 0) -> PushAck:
        """Push this round's update under (client, round, attempt); returns once the
        fed server counts it (now, or under an earlier attempt). UNAVAILABLE or
        DEADLINE_EXCEEDED: the same key again (PUSH_RETRY_ON); not joined: join,
        then push again; out of range: StragglerError; anything else: StateError
        or the RpcError."""
        header = PushHeaderInfo(
            client_id=self.client_id,
            round=round_index,
            num_samples=self.num_samples,
            total_bytes=len(blob),
            attempt=attempt,
        )
        timeout_s = self.push_timeout_s(len(blob))

        def push() -> Any:
            requests = self._paced(push_requests(header, blob, self.chunk_bytes))
            return self.stub.PushAdapter(requests, timeout=timeout_s)

        for rejoins in itertools.count():
            try:
                reply = self.retry.call("PushAdapter", push, retry_on=PUSH_RETRY_ON)
                return PushAck(attempt=attempt, seq=reply.seq, replayed=reply.replayed)
            except grpc.RpcError as err:
                code, reason = status_code(err), refusal_of(err)
                details = status_details(err)
                outcome = push_outcome(code, reason)
                if outcome == "accepted":
                    log.info(
                        "client %d: round %d already counted: %s",
                        self.client_id,
                        round_index,
                        details,
                    )
                    return PushAck(attempt=attempt, seq=0, counted_before=True)
                if outcome == "straggler":
                    raise StragglerError(round_index, reason or "out_of_range", details) from None
                if outcome == "rejoin" and rejoins < self.MAX_REJOINS:
                    log.warning(
                        "client %d: fed server does not know it (%s); joining again",
                        self.client_id,
                        details,
                    )
                    self.join(self.num_samples)
                    continue
                if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS):
                    raise StateError(
                        f"fed server refused round {round_index} attempt {attempt} "
                        f"({reason or code.name}): {details}"
                    ) from None
                raise

    def _open_pull(self, round_index: int) -> Iterator[Any]:
        """A PullGlobal call whose wait is over (its first message is in).
        UNAVAILABLE is retried under the policy; a deadline that runs out while
        the round is still open is normal: ask again."""
        request = fed_server_pb2.PullGlobalRequest(client_id=self.client_id, round=round_index)

        def open_once() -> Iterator[Any]:
            responses = self.stub.PullGlobal(request, timeout=self.pull_timeout_s)
            # The fed server answers only once the round has closed: the first
            # message's arrival ends the wait, and the transfer is what follows
            # (that header's own few bytes, and a propagation delay if one is
            # set, fall in the wait).
            first = next(responses, None)
            return itertools.chain([] if first is None else [first], responses)

        while True:
            try:
                return self.retry.call("PullGlobal", open_once)
            except grpc.RpcError as err:
                if status_code(err) != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
                log.info(
                    "client %d: round %d still open; asking again", self.client_id, round_index
                )

    def pull_global(self, round_index: int) -> GlobalStream:
        if round_index < 0:
            return GlobalStream(None)  # before round 0 every client holds the same seeded init
        return GlobalStream(
            self._open_pull(round_index),
            reopen=lambda: self._open_pull(round_index),
            retry=self.retry,
        )


class GlobalStream:
    """The rest of a PullGlobal stream whose wait is over (GlobalPull); None: nothing to
    pull (before round 0). A transfer that breaks is pulled again from the start."""

    def __init__(
        self,
        responses: Iterator[Any] | None,
        reopen: Callable[[], Iterator[Any]] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._responses = responses
        self._reopen = reopen
        self._retry = retry or RetryPolicy()

    def read(self) -> tuple[int, bytes | None]:
        if self._responses is None:
            return -1, None
        waits = self._retry.waits("PullGlobal")
        while True:
            try:
                header, blob = read_pull(self._responses)
                break
            except grpc.RpcError as err:
                retryable = (UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if self._reopen is None or status_code(err) not in retryable:
                    raise
                waits.wait(err)
                self._responses = self._reopen()
        return (header.round if header.has_adapter else -1), blob


class _Closing(Exception):
    """close() was called while the follower waited to reconnect."""


class AllocationFollower:
    """Registers with the controller and follows its allocation pushes (RoundPlan).

    A background thread reads the Subscribe stream and applies every update at
    once (`apply`: the shaper's new rates), so a push that arrives mid-round
    takes effect at the next chunk. `local_steps(r)` waits until an
    allocation for round r (or later) has arrived, so a round never starts on
    a stale plan. When the stream breaks with UNAVAILABLE (the controller's
    server restarted), the thread registers again and subscribes again under
    the retry policy; only a spent budget or another error ends it.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        register: Any,
        apply: Callable[[Any], None],
        tracer: Any,
        wait_timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        from fedsllm.proto import controller_pb2_grpc

        self.client_id = register.client_id
        self.apply = apply
        self.tracer = tracer
        self.wait_timeout_s = wait_timeout_s
        self._register = register
        self._closing = threading.Event()
        # Waits between retries end at once when close() is called.
        self.retry = dataclasses.replace(
            retry or RetryPolicy(seed=register.client_id), sleep=self._wait_or_stop
        )
        self._cond = threading.Condition()
        self._latest: Any = None
        self._error: BaseException | None = None
        self._stub = controller_pb2_grpc.ControllerStub(channel)
        self._stream_lock = threading.Lock()
        self._stream = self._subscribe()
        self._thread = threading.Thread(target=self._follow, name="allocations", daemon=True)
        self._thread.start()

    def _subscribe(self) -> Any:
        """Register (retried under the policy), then open the Subscribe stream."""
        from fedsllm.proto import controller_pb2
        from fedsllm.wire.messages import register_to_proto

        request = register_to_proto(self._register)
        self.retry.call("Register", lambda: self._stub.Register(request, timeout=30))
        return self._stub.Subscribe(controller_pb2.SubscribeRequest(client_id=self.client_id))

    def _resubscribe(self) -> bool:
        """A new stream in place of the broken one; False when closing."""
        stream = self._subscribe()
        with self._stream_lock:
            if self._closing.is_set():
                stream.cancel()
                return False
            self._stream = stream
            return True

    def _wait_or_stop(self, seconds: float) -> None:
        """The follower's retry wait: ends early, raising _Closing, on close()."""
        if self._closing.wait(seconds):
            raise _Closing

    def _follow(self) -> None:
        failure: BaseException
        waits = None
        try:
            while True:
                try:
                    for message in self._stream:
                        waits = None  # a message came through: the outage is over
                        self._on_message(message)
                    # A controller that shuts down ends its streams cleanly; one
                    # that comes back (a restarted fed server) is subscribed again.
                    broken: BaseException = StateError("the controller ended the stream")
                except grpc.RpcError as err:
                    if self._closing.is_set() and status_code(err) == grpc.StatusCode.CANCELLED:
                        return  # close() cancelled the stream
                    if status_code(err) != UNAVAILABLE:
                        raise
                    broken = err
                if self._closing.is_set():
                    return
                log.warning(
                    "client %d: allocation stream ended (%s); subscribing again",
                    self.client_id,
                    _describe(broken),
                )
                waits = waits or self.retry.waits("Subscribe")
                waits.wait(broken)
                if not self._resubscribe():
                    return
        except _Closing:
            return
        except Exception as err:  # noqa: BLE001 - recorded for local_steps
            # A malformed push, a shaper that refused its rates, another status,
            # or a spent reconnect budget.
            if self._closing.is_set():
                return
            failure = err
        # Recorded so that local_steps fails at once instead of timing out with
        # a misleading message once this thread is gone.
        with self._cond:
            self._error = failure
            self._cond.notify_all()

    def _on_message(self, message: Any) -> None:
        from fedsllm.wire.messages import allocation_from_proto

        info = allocation_from_proto(message)
        self.apply(info)
        self.tracer.event(
            "rates_applied",
            round=info.round,
            version=info.version,
            uplink_bps=info.uplink_bps,
            downlink_bps=info.downlink_bps,
            bandwidth_hz=info.bandwidth_hz,
            num_local_steps=info.num_local_steps,
        )
        log.info(
            "allocation v%d for round %d: %.3f MHz, up %.2f Mbit/s, n=%d",
            info.version,
            info.round,
            info.bandwidth_hz / 1e6,
            info.uplink_bps / 1e6,
            info.num_local_steps,
        )
        with self._cond:
            self._latest = info
            self._cond.notify_all()

    def latest(self) -> Any:
        with self._cond:
            return self._latest

    def local_steps(self, round_index: int) -> int:
        with self._cond:
            self._cond.wait_for(
                lambda: (
                    self._error is not None
                    or (self._latest is not None and self._latest.round >= round_index)
                ),
                timeout=self.wait_timeout_s,
            )
            # An allocation that arrived before the stream failed still holds.
            if self._latest is not None and self._latest.round >= round_index:
                return int(self._latest.num_local_steps)
            if self._error is not None:
                raise RuntimeError(f"allocation stream failed: {self._error}")
            raise TimeoutError(
                f"no allocation for round {round_index} after {self.wait_timeout_s:.0f} s"
            )

    def close(self) -> None:
        with self._stream_lock:
            self._closing.set()
            self._stream.cancel()
        self._thread.join(timeout=5)
