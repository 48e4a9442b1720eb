"""MainServer gRPC servicer: one long-lived bidirectional Train stream per client.

Per step the client sends a header, the chunks of "activations",
"attention_mask" and "labels", and an end marker (wire version 2: folded into
a few StepPart messages, fedsllm.wire.train); the server validates the
whole step before it touches the model (dtype, shapes against each other and
against the model, label and mask values: main_server.step_checks, each
tensor as it completes), runs ServerTrainer, and streams
back the result and, in training, the activation gradient, paced at the
downlink rate the client asked for. A bad frame ends the stream with
INVALID_ARGUMENT and changes no server state.

A train step is applied at most once per (client, round, step): a client
re-sends the step whose reply it did not get, on a new stream, and the first
copy may have been applied (or still be computing) already. Each train job
carries its key and a digest of its tensors; the worker answers a re-send
from the first result (main_server.compute.admit_step) and refuses a key
that goes back (FAILED_PRECONDITION). The reply is paced like any other.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NoReturn

import grpc
import torch

from fedsllm.errors import ResourceLimitError, StateError, WireError
from fedsllm.proto import main_server_pb2 as pb
from fedsllm.proto import main_server_pb2_grpc as pb_grpc
from fedsllm.proto import tensor_pb2
from fedsllm.roles import ROLE_STOP, RoleStopping, compute_context
from fedsllm.security.identity import PermissionDeniedError, authorize
from fedsllm.security.limits import PeerLimits, peer_key
from fedsllm.trace import Tracer
from fedsllm.wire.messages import (
    StepResultInfo,
    TrainHelloInfo,
    TrainWelcomeInfo,
    welcome_to_proto,
)
from fedsllm.wire.status import abort_for
from fedsllm.wire.tensors import WireLimits, tensor_to_frame
from fedsllm.wire.train import (
    StepUpload,
    message_bytes,
    read_uplink,
    step_download_responses,
)
from main_server.compute import (
    LocalWorker,
    ServerStepResult,
    ServerTrainer,
    StepJob,
    StepQueue,
    StepQueueStopped,
)
from main_server.step_checks import STEP_TENSORS, StepLimits, step_specs

log = logging.getLogger(__name__)

STOP_POLL_S = 0.25
"""How often a handler waiting on its step checks whether the server is
stopping or its client has gone."""

STOP_GRACE_S = 1.5
"""Once the server stops, how long a handler still waits for a step the worker
is computing (queued ones are refused at once): a step that finishes is
answered, so its client has nothing to re-send. Shorter than the server's stop
grace (2 s, main_server.__main__.serve_until_stopped), so the handler ends
with UNAVAILABLE before it would be cancelled."""


def step_digest(upload: StepUpload) -> str:
    """A hash of the step's tensors (names, dtypes, shapes, bytes): a re-send
    carries the same frames, so the same digest; a new step under an old key
    (a restarted client training its round again) almost surely does not.
    The service computes it on a thread of its own while the worker computes
    the step: hashed on the handler before the step was queued, 1.57 MB cost
    1.3-2 ms of every train step's round trip (benchmarks/step_overhead.py).
    The digests are kept in the main server's state, so the hash stays the
    one earlier runs saved."""
    h = hashlib.blake2b(digest_size=16)
    for name in STEP_TENSORS:
        frame = upload.frames[name]
        h.update(f"{name}:{frame.dtype}:{frame.shape};".encode())
        h.update(frame.data)
    return h.hexdigest()


class MainServerService(pb_grpc.MainServerServicer):
    def __init__(
        self,
        trainer: ServerTrainer,
        limits: StepLimits,
        scenario_hash: str,
        tracer: Tracer,
        chunk_bytes: int,
        pace: Callable[[int, float, int, bool], None] | None = None,
        adapter_bytes: Callable[[], bytes] | None = None,
        compute: Callable[[float, str], Any] | None = None,
        flops_per_sample: float = 0.0,
        steps: StepQueue | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.trainer = trainer
        self.stop = ROLE_STOP if stop is None else stop
        """Set when the server is stopping: handlers waiting on a step give up
        (UNAVAILABLE, which the client retries on the restarted server)."""
        self.steps = steps or StepQueue(LocalWorker(trainer))
        """Receiving a step is decoupled from computing it: handlers put steps
        here and wait; one worker computes (and, in wave mode, fuses) them."""
        self.limits = limits
        self.specs = step_specs(limits)
        """How a step must look, its values included (main_server.step_checks):
        the assembler refuses a bad step before the model sees any of it."""
        self.scenario_hash = scenario_hash
        self.tracer = tracer
        self.chunk_bytes = chunk_bytes
        self.pace = pace
        """pace(client_id, rate_bps, nbytes, new_message): blocks before a downlink
        chunk is sent, at the rate the client asked for in its step header
        (0 = unpaced; fedsllm.roles.pace_downlink)."""
        self.adapter_bytes = adapter_bytes
        self.compute = compute or compute_context(None)
        """compute(flops, label): device pacing around a training step. It wraps the
        queue wait too and sleeps in the handler, not in the worker, so clients
        are served in parallel at the emulated speed, as docs/MODEL.md section 3
        assumes."""
        self.flops_per_sample = flops_per_sample
        self.peer_limits = PeerLimits()
        """Train streams per peer (fedsllm.security.limits)."""
        self.digests = ThreadPoolExecutor(max_workers=1, thread_name_prefix="step-digest")
        """Hashes train steps (step_digest) beside the worker, off the round
        trip: the digest is read only when the client's next step arrives with
        the same key, or when the trainer's state is saved. The upload the
        thread holds keeps its receive buffers from being reused meanwhile."""

    # ------------------------------------------------------------ Train
    def Train(
        self, request_iterator: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        uplink = read_uplink(
            request_iterator,
            lambda _header: self.specs,
            WireLimits(max_tensor_bytes=self.limits.max_tensor_bytes),
        )
        try:
            hello = next(uplink, None)
            if not isinstance(hello, TrainHelloInfo):
                raise WireError("TrainRequest", "the stream ended before hello")
            self._check_hello(hello)
            # The stream trains as the client the channel says it is, never as
            # the hello claims; one peer holds at most a few streams.
            peer = peer_key(
                authorize(role="client", client_id=hello.client_id, action="open a Train stream"),
                context,
            )
            slot = self.peer_limits.stream("Train", peer)
            slot.__enter__()
        except (WireError, StateError, ResourceLimitError, PermissionDeniedError) as err:
            self._abort(context, err)
        context.add_callback(lambda: slot.__exit__(None, None, None))
        client_id = hello.client_id
        log.info("client %d connected", client_id)
        yield pb.TrainResponse(
            welcome=welcome_to_proto(
                TrainWelcomeInfo(
                    client_id=client_id,
                    scenario_hash=self.scenario_hash,
                    max_tensor_bytes=self.limits.max_tensor_bytes,
                )
            )
        )
        try:
            for upload in uplink:
                if not isinstance(upload, StepUpload):
                    raise WireError("TrainRequest", "hello sent twice")
                yield from self._serve_step(client_id, upload, context)
        except (WireError, StateError) as err:
            self._abort(context, err)
        except (RoleStopping, StepQueueStopped) as err:
            # Not the client's fault: it re-sends the step once we are back.
            log.info("client %d: %s", client_id, err)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"main server stopping: {err}")
        log.info("client %d disconnected", client_id)

    def _transfer_s(self, upload: StepUpload) -> float:
        """One-way transfer time of the step: from the client's send stamp to the end
        marker's arrival, both on the run's reference clock (each side adds its
        offset to the fed server's clock); the receive window alone when unstamped.
        Measuring from the header's arrival instead undercounts whenever this
        handler is resumed late."""
        if upload.header.sent_unix_s > 0:
            return max(0.0, self.tracer.now() - upload.header.sent_unix_s)
        return upload.receive_s

    def _check_hello(self, hello: TrainHelloInfo) -> None:
        if not 0 <= hello.client_id < self.limits.num_clients:
            raise WireError(
                "hello.client_id", f"={hello.client_id}, expected [0, {self.limits.num_clients})"
            )
        if hello.scenario_hash != self.scenario_hash:
            raise StateError(
                f"hello.scenario_hash={hello.scenario_hash!r} does not match "
                f"the server's {self.scenario_hash!r}"
            )
        if hello.wire_dtype != self.limits.wire_dtype:
            raise WireError(
                "hello.wire_dtype", f"={hello.wire_dtype!r}, expected {self.limits.wire_dtype!r}"
            )

    def _step_tensors(self, upload: StepUpload) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The step's tensors, once its header named all three (the assembler
        checked each as it arrived, against self.specs)."""
        if tuple(sorted(upload.header.tensor_names)) != tuple(sorted(STEP_TENSORS)):
            raise WireError(
                "header.tensor_names",
                f"={list(upload.header.tensor_names)}, expected {list(STEP_TENSORS)}",
            )
        hidden = upload.tensor("activations", torch.float32)
        mask = upload.tensor("attention_mask")
        labels = upload.tensor("labels")
        return hidden, mask, labels

    def _await(
        self, future: Future[ServerStepResult], context: grpc.ServicerContext
    ) -> ServerStepResult:
        """The step's result; RoleStopping when the client has gone or, once the
        server stops, after STOP_GRACE_S, so no handler outlives a SIGTERM
        waiting on the worker."""
        give_up_at: float | None = None
        while True:
            try:
                return future.result(timeout=STOP_POLL_S)
            except TimeoutError:
                if not context.is_active():
                    raise RoleStopping("the client went away") from None
                if self.stop.is_set():
                    now = time.monotonic()
                    give_up_at = now + STOP_GRACE_S if give_up_at is None else give_up_at
                    if now >= give_up_at:
                        raise RoleStopping("stopping: the step did not finish") from None

    def _serve_step(
        self, client_id: int, upload: StepUpload, context: grpc.ServicerContext
    ) -> Iterator[Any]:
        receive_s = self._transfer_s(upload)  # now, before compute: the upload's end
        hidden, mask, labels = self._step_tensors(upload)
        header = upload.header
        round_index, step = header.round, header.step
        train = header.mode == "train"
        with self.tracer.span(
            "server_compute", round=round_index, step=step, client=client_id
        ) as span:
            job = StepJob(
                hidden,
                mask,
                labels,
                mode="train" if train else "eval",
                round=round_index,
                initial_adapter=header.initial_adapter,
                client_id=client_id,
                # Train steps are keyed (applied once); evaluations change nothing.
                step=step if train else None,
                digest=self.digests.submit(step_digest, upload) if train else "",
            )
            if train:
                flops = self.flops_per_sample * hidden.shape[0]
                with self.compute(flops, "server_compute") as device:
                    span.extra["device"] = device
                    result = self._await(self.steps.submit(job), context)
            else:
                result = self._await(self.steps.submit(job), context)
            # receive_s runs from the client's send stamp (or, unstamped, from the
            # step header) to the end marker's arrival here (see _transfer_s):
            # bytes / receive_s is the uplink rate achieved, whatever shaped it.
            span.extra.update(
                mode=header.mode,
                loss=result.loss,
                compute_s=result.compute_s,
                queue_s=result.queue_s,
                fused=result.num_fused,
                receive_s=receive_s,
                uplink_bytes=sum(frame.num_bytes for frame in upload.frames.values()),
            )
            if result.replayed:
                # The upload crossed the link again; compute_s is the first copy's.
                span.extra["replayed"] = True
        if result.replayed:
            log.info(
                "client %d: round %d step %d re-sent; answered from its first computation",
                client_id, round_index, step,
            )  # fmt: skip
        names: tuple[str, ...] = ("activations_grad",) if result.grad_hidden is not None else ()
        info = StepResultInfo(
            round=round_index,
            step=step,
            loss=result.loss,
            num_tokens=result.num_tokens,
            server_compute_s=result.compute_s,
            server_receive_s=receive_s,
            tensor_names=names,
        )
        if result.grad_hidden is None:
            yield info  # no tensor (evaluation): the result alone, one message
            return
        frame = tensor_to_frame("activations_grad", result.grad_hidden, self.limits.wire_dtype)
        # Unpaced, the result rides in the gradient's first message (wire
        # version 2: one message fewer per step, which shows on a fast link).
        # On a paced (emulated) downlink the link is the bottleneck, and the
        # reply keeps the unfolded layout: the result first, not charged to the
        # link, then the gradient's chunks, each charged (as version 1 paced).
        fold = self.pace is None or header.downlink_bps <= 0
        replies = step_download_responses(info, [frame], self.chunk_bytes, fold)
        if not fold:
            yield next(replies)
        with self.tracer.span(
            "downlink", round=round_index, step=step, client=client_id, bytes=frame.num_bytes
        ):
            # Chunks are views of the gradient; the Train codec (installed by
            # create_server) frames each message with one copy of its bytes.
            for i, msg in enumerate(replies):
                if self.pace is not None:
                    self.pace(client_id, header.downlink_bps, message_bytes(msg), i == 0)
                yield msg

    # ------------------------------------------------------------ adapter
    def GetServerAdapter(
        self, request: pb.GetServerAdapterRequest, context: grpc.ServicerContext
    ) -> Iterator[tensor_pb2.AdapterChunk]:
        from fedsllm.wire.adapters import blob_to_chunks

        try:  # the server's adapter is the run's, not a client's to read
            authorize(role=("launcher", "fed_server"), action="read the server adapter")
        except PermissionDeniedError as err:
            self._abort(context, err)
        if self.adapter_bytes is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server does not export adapters")
        blob = self.adapter_bytes()
        yield from blob_to_chunks(blob, self.chunk_bytes)

    def _abort(self, context: grpc.ServicerContext, err: Exception) -> NoReturn:
        abort_for(context, err, log)
