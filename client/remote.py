"""The client's gRPC side: the Train stream to the main server and the calls to
the fed server, behind the small link interfaces of client/loop.py.

Uplink pacing happens here, before each message is handed to gRPC (the
request iterator pulls from a queue the loop fills), so no byte reaches the
network earlier than the emulated link allows.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import torch

from client.loop import StepReply
from fedsllm.errors import StateError, WireError
from fedsllm.proto import fed_server_pb2
from fedsllm.proto import fed_server_pb2_grpc as fed_grpc
from fedsllm.wire.adapters import PushHeaderInfo, push_requests, read_pull
from fedsllm.wire.messages import StepHeaderInfo, TrainHelloInfo, TrainWelcomeInfo
from fedsllm.wire.rpc import RequestQueue, call_with_retry
from fedsllm.wire.tensors import TensorSpec, tensor_to_frame
from fedsllm.wire.train import (
    StepDownload,
    message_bytes,
    read_downlink,
    step_upload_requests,
    train_call,
    train_request,
)

log = logging.getLogger(__name__)

Pace = Callable[[int, bool], None]
"""pace(nbytes, new_message): blocks until the emulated link has carried nbytes;
new_message marks the first message of a transfer (charged the propagation delay)."""


class MainServerStream:
    """One long-lived bidirectional Train stream (MainServerLink)."""

    def __init__(
        self,
        channel: grpc.Channel,
        client_id: int,
        scenario_hash: str,
        wire_dtype: str,
        chunk_bytes: int,
        pace_up: Pace | None = None,
        downlink_bps: Callable[[], float] = lambda: 0.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.client_id = client_id
        self.wire_dtype = wire_dtype
        self.chunk_bytes = chunk_bytes
        self.pace_up = pace_up
        self.downlink_bps = downlink_bps
        self.now = now
        """The run's reference clock (local time + offset to the fed server), used
        to stamp each step so the receiver can measure its one-way transfer."""
        self._queue = RequestQueue()
        self._sent_shape: tuple[int, ...] | None = None
        self._sent_downlink_bps = 0.0
        self._call = train_call(channel)(self._queue)
        self._downlink = read_downlink(self._call, self._reply_specs)
        self._queue.put(
            train_request(
                TrainHelloInfo(
                    client_id=client_id, scenario_hash=scenario_hash, wire_dtype=wire_dtype
                )
            )
        )
        welcome = next(self._downlink, None)
        if not isinstance(welcome, TrainWelcomeInfo):
            raise WireError("TrainResponse", "main server did not answer hello with welcome")

    def _reply_specs(self, _result: Any) -> list[TensorSpec]:
        return [
            TensorSpec(
                "activations_grad",
                frozenset({self.wire_dtype}),
                self._sent_shape,
                require_finite=True,
            )
        ]

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
        frames = [
            tensor_to_frame("activations", activations.detach(), self.wire_dtype),
            tensor_to_frame("attention_mask", attention_mask),
            tensor_to_frame("labels", labels),
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
        total = 0
        # The chunks are views of the tensors: gRPC's sending thread encodes each
        # just before it goes out (one copy, into memory the last message freed),
        # so the tensors must stay as they are until receive_reply returns.
        for request in step_upload_requests(header, frames, self.chunk_bytes):
            size = message_bytes(request)
            if self.pace_up is not None and train:
                # Evaluation is a measurement instrument, not part of the
                # protocol being emulated: it crosses unshaped.
                self.pace_up(size, total == 0)
            self._queue.put(request)
            total += size
        return total

    def receive_reply(self, round_index: int, step: int) -> tuple[StepReply, int]:
        reply = next(self._downlink, None)
        if not isinstance(reply, StepDownload):
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

    def close(self) -> None:
        self._queue.close()
        for _ in self._downlink:  # drain so the call completes with its status
            pass


class FedServerClient:
    """Join, push and pull against the fed server (FedServerLink)."""

    def __init__(
        self,
        channel: grpc.Channel,
        client_id: int,
        scenario_hash: str,
        chunk_bytes: int,
        pace_up: Pace | None = None,
        rpc_timeout_s: float = 60.0,
        pull_timeout_s: float = 3600.0,
        upload_s: Callable[[int], float] = lambda _nbytes: 0.0,
        base_hash: str = "",
    ) -> None:
        self.stub = fed_grpc.FedServerStub(channel)
        self.base_hash = base_hash
        """Hash of the frozen base this client built; the fed server refuses a mismatch."""
        self.upload_s = upload_s
        """Expected emulated time to upload n bytes (0 = unshaped): the push deadline
        grows with it, so a large adapter on a slow link is not cut off."""
        self.client_id = client_id
        self.scenario_hash = scenario_hash
        self.chunk_bytes = chunk_bytes
        self.pace_up = pace_up
        self.rpc_timeout_s = rpc_timeout_s
        self.pull_timeout_s = pull_timeout_s
        self.num_samples = 0

    def join(self, num_samples: int) -> tuple[int, int]:
        self.num_samples = num_samples
        request = fed_server_pb2.JoinRequest(
            client_id=self.client_id,
            num_samples=num_samples,
            scenario_hash=self.scenario_hash,
            base_hash=self.base_hash,
        )
        reply = call_with_retry(lambda: self.stub.Join(request, timeout=self.rpc_timeout_s))
        return reply.current_round, reply.num_rounds

    def _paced(self, requests: Iterator[Any]) -> Iterator[Any]:
        for i, request in enumerate(requests):
            if self.pace_up is not None:
                self.pace_up(request.ByteSize(), i == 0)
            yield request

    def push_adapter(self, round_index: int, blob: bytes) -> None:
        header = PushHeaderInfo(
            client_id=self.client_id,
            round=round_index,
            num_samples=self.num_samples,
            total_bytes=len(blob),
        )
        try:
            self.stub.PushAdapter(
                self._paced(push_requests(header, blob, self.chunk_bytes)),
                timeout=self.rpc_timeout_s + 2.0 * self.upload_s(len(blob)),
            )
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                # A straggler past the deadline: the round went on without it.
                raise StateError(
                    f"fed server refused round {round_index}: {err.details()}"
                ) from None
            raise

    def pull_global(self, round_index: int) -> GlobalStream:
        if round_index < 0:
            return GlobalStream(None)  # before round 0 every client holds the same seeded init
        request = fed_server_pb2.PullGlobalRequest(client_id=self.client_id, round=round_index)
        responses = self.stub.PullGlobal(request, timeout=self.pull_timeout_s)
        # The fed server answers only once the round has closed: the first message's
        # arrival ends the wait, and the transfer is what follows (that header's own
        # few bytes, and a propagation delay if one is set, fall in the wait).
        first = next(responses, None)
        return GlobalStream(itertools.chain([] if first is None else [first], responses))


class GlobalStream:
    """The rest of a PullGlobal stream whose wait is over (GlobalPull); None: nothing to
    pull (before round 0)."""

    def __init__(self, responses: Iterator[Any] | None) -> None:
        self._responses = responses

    def read(self) -> tuple[int, bytes | None]:
        if self._responses is None:
            return -1, None
        header, blob = read_pull(self._responses)
        return (header.round if header.has_adapter else -1), blob


class AllocationFollower:
    """Registers with the controller and follows its allocation pushes (RoundPlan).

    A background thread reads the Subscribe stream and applies every update at
    once (`apply`: the shaper's new rates), so a push that arrives mid-round
    takes effect at the next chunk. `local_steps(r)` waits until an
    allocation for round r (or later) has arrived, so a round never starts on
    a stale plan.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        register: Any,
        apply: Callable[[Any], None],
        tracer: Any,
        wait_timeout_s: float = 120.0,
    ) -> None:
        from fedsllm.proto import controller_pb2, controller_pb2_grpc
        from fedsllm.wire.messages import register_to_proto

        self.client_id = register.client_id
        self.apply = apply
        self.tracer = tracer
        self.wait_timeout_s = wait_timeout_s
        self._cond = threading.Condition()
        self._latest: Any = None
        self._error: BaseException | None = None
        self._closing = False
        stub = controller_pb2_grpc.ControllerStub(channel)
        call_with_retry(lambda: stub.Register(register_to_proto(register), timeout=30))
        self._stream = stub.Subscribe(controller_pb2.SubscribeRequest(client_id=register.client_id))
        self._thread = threading.Thread(target=self._follow, name="allocations", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        from fedsllm.wire.messages import allocation_from_proto

        try:
            for message in self._stream:
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
        except grpc.RpcError as err:
            if self._closing and err.code() == grpc.StatusCode.CANCELLED:
                return  # close() cancelled the stream
            failure: BaseException = err
        except Exception as err:  # a malformed push, or a shaper that refused its rates
            failure = err
        else:
            failure = StateError("the controller ended the allocation stream")
        # Recorded so that local_steps fails at once instead of timing out with
        # a misleading message once this thread is gone.
        with self._cond:
            self._error = failure
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
        self._closing = True
        self._stream.cancel()
        self._thread.join(timeout=5)
