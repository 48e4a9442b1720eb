"""FedServer gRPC servicer: decode, call RoundState, encode, map errors.

Thin by design: every rule lives in fed_server/rounds.py; this module only
turns protobuf into plain values and domain exceptions into status codes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import grpc

from fed_server.checkpoint import save_server_adapter
from fed_server.rounds import WAIT_POLL_S, CallerGoneError, RoundState, ServerStoppingError
from fedsllm.bootstrap import read_server_adapter
from fedsllm.errors import ResourceLimitError, StateError, WireError
from fedsllm.proto import fed_server_pb2 as pb
from fedsllm.proto import fed_server_pb2_grpc as pb_grpc
from fedsllm.security.identity import authorize
from fedsllm.security.limits import PeerLimits, peer_key
from fedsllm.wire.adapters import (
    AdapterAssembler,
    GlobalHeaderInfo,
    pull_responses,
    read_blob_chunks,
    read_push_header,
)
from fedsllm.wire.status import REFUSED, abort_for

log = logging.getLogger(__name__)


def _abort(context: grpc.ServicerContext, err: Exception) -> NoReturn:
    abort_for(context, err, log)


STOPPING = "fed server stopping"
"""The message of UNAVAILABLE for a call the stopping server ends: retry elsewhere/later."""


def _abort_stopping(context: grpc.ServicerContext) -> NoReturn:
    # Not a refusal of the request (the status table's business): the server is
    # going away, which is what UNAVAILABLE means to every gRPC client.
    context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING)
    raise ServerStoppingError(STOPPING)  # unreachable: context.abort raises


class FedServerService(pb_grpc.FedServerServicer):
    def __init__(
        self,
        state: RoundState,
        scenario_hash: str,
        num_local_steps: int,
        max_adapter_bytes: int,
        chunk_bytes: int,
        pull_timeout_s: float = 3600.0,
        pace_down: Callable[[int, int, bool], None] | None = None,
        base_hash: str = "",
        run_dir: Path | None = None,
        limits: PeerLimits | None = None,
        pull_poll_s: float = WAIT_POLL_S,
    ) -> None:
        self.state = state
        self.pull_poll_s = pull_poll_s
        """How often a waiting PullGlobal checks that its client is still there
        (a cancellation also wakes it at once, through the call's callback)."""
        self.limits = limits or PeerLimits()
        """Streams per peer and Join rate (fedsllm.security.limits)."""
        self.base_hash = base_hash
        """Hash of the frozen base weights; a peer presenting another is refused
        (empty: the first peer to Join with one sets it)."""
        self._base_lock = threading.Lock()
        self._main_joins = 0
        self.run_dir = run_dir
        """Where the main server's adapter is kept (adapters/server*.safetensors)."""
        self.pace_down = pace_down
        """pace_down(client_id, nbytes, new_message): blocks before each chunk of the
        global adapter goes out, at that client's downlink rate (docs/MODEL.md: omega / R_dl);
        raises ServerStoppingError when the server stops meanwhile."""
        self.scenario_hash = scenario_hash
        self.num_local_steps = num_local_steps
        self.max_adapter_bytes = max_adapter_bytes
        self.chunk_bytes = chunk_bytes
        self.pull_timeout_s = pull_timeout_s

    def _check_hash(self, given: str) -> None:
        if given != self.scenario_hash:
            raise StateError(
                f"scenario_hash {given!r} does not match the server's "
                f"{self.scenario_hash!r}: client and server run different scenarios"
            )

    def _check_base(self, given: str, who: str) -> None:
        with self._base_lock:
            if not self.base_hash and given:
                # A base every role builds itself: the first peer's is the reference.
                self.base_hash = given
                log.info("base hash %s (from %s) is the run's reference", given, who)
                return
        if self.base_hash and given != self.base_hash:
            raise StateError(
                f"base_hash {given!r} of {who} does not match the fed server's "
                f"{self.base_hash!r}: the frozen base weights differ"
            )

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinResponse:
        try:
            peer = peer_key(
                authorize(role="client", client_id=request.client_id, action="Join"), context
            )
            self.limits.check_rate("Join", peer)
            self._check_hash(request.scenario_hash)
            self._check_base(request.base_hash, f"client {request.client_id}")
            joined = self.state.join(request.client_id, request.num_samples)
        except REFUSED as err:
            _abort(context, err)
        return pb.JoinResponse(
            current_round=joined.current_round,
            num_rounds=joined.num_rounds,
            num_local_steps=self.num_local_steps,
        )

    def PushAdapter(
        self, request_iterator: Iterator[pb.PushAdapterRequest], context: grpc.ServicerContext
    ) -> pb.PushAdapterResponse:
        try:
            peer = peer_key(authorize(role="client", action="PushAdapter"), context)
            with self.limits.stream("PushAdapter", peer):
                requests = iter(request_iterator)
                first = next(requests, None)
                if first is None:
                    raise WireError("PushAdapterRequest.kind", "empty stream, expected a header")
                announced = first.header.total_bytes if first.HasField("header") else 0
                if announced > self.max_adapter_bytes:
                    raise ResourceLimitError(
                        "adapter size",
                        f"PushAdapterHeader.total_bytes={announced} exceeds the limit "
                        f"{self.max_adapter_bytes}",
                    )
                header = read_push_header(first, self.max_adapter_bytes)
                # Whose adapter it is comes from the channel: checked before a byte is read.
                authorize(role="client", client_id=header.client_id, action="PushAdapter")
                # Memory grows as bytes arrive, never to the announced total at once.
                asm = AdapterAssembler(
                    header.total_bytes, self.max_adapter_bytes, preallocate=False
                )
                blob = read_blob_chunks(requests, "PushAdapterRequest", asm)
                result = self.state.submit(
                    header.client_id,
                    header.round,
                    blob,
                    header.num_samples,
                    attempt=header.attempt,
                )
        except REFUSED as err:
            _abort(context, err)
        snap = self.state.snapshot()
        return pb.PushAdapterResponse(
            accepted=True,
            round=header.round,
            num_received=len(snap.pending),
            replayed=result.replayed,
            seq=result.acceptance.seq,
        )

    def PullGlobal(
        self, request: pb.PullGlobalRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.PullGlobalResponse]:
        try:
            peer = peer_key(
                authorize(role="client", client_id=request.client_id, action="PullGlobal"), context
            )
            # client_id picks whose downlink paces the transfer: check it first.
            if not 0 <= request.client_id < self.state.num_clients:
                raise WireError(
                    "client_id", f"{request.client_id} is not in [0, {self.state.num_clients})"
                )
            with self.limits.stream("PullGlobal", peer):
                # A client that goes away (cancelled, killed) frees its slot and this
                # thread at once, not when the round closes: its call's end wakes the wait.
                context.add_callback(self.state.wake)
                done, blob = self.state.wait_global_round(
                    request.round,
                    self.pull_timeout_s,
                    alive=context.is_active,
                    poll_s=self.pull_poll_s,
                )
        except CallerGoneError:
            log.info("PullGlobal of client %d: the client went away", request.client_id)
            return
        except ServerStoppingError:
            _abort_stopping(context)
        except REFUSED as err:
            _abort(context, err)
        header = GlobalHeaderInfo(
            round=max(done, 0),
            has_adapter=blob is not None,
            total_bytes=len(blob) if blob else 0,
            finished=self.state.finished,
        )
        for i, response in enumerate(pull_responses(header, blob, self.chunk_bytes)):
            # Downlink pacing must not hold a stopping server: checked per message
            # (and the pacer itself stops pacing once the role stops).
            if self.state.stopping:
                _abort_stopping(context)
            if self.pace_down is not None:
                self.pace_down(request.client_id, response.ByteSize(), i == 0)
            yield response

    def JoinMainServer(
        self, request: pb.MainServerJoinRequest, context: grpc.ServicerContext
    ) -> pb.MainServerJoinResponse:
        """Idempotent: it changes nothing but the log, so a restarted main server
        (or this one after a restart of the fed server) joins again freely."""
        try:
            peer = peer_key(authorize(role="main_server", action="JoinMainServer"), context)
            self.limits.check_rate("JoinMainServer", peer)
            self._check_hash(request.scenario_hash)
            self._check_base(request.base_hash, "the main server")
        except REFUSED as err:
            _abort(context, err)
        with self._base_lock:
            self._main_joins += 1
            again = self._main_joins > 1
        log.info("main server joined%s (base %s)", " again" if again else "", request.base_hash)
        return pb.MainServerJoinResponse(num_rounds=self.state.num_rounds)

    def PushServerAdapter(
        self,
        request_iterator: Iterator[pb.PushServerAdapterRequest],
        context: grpc.ServicerContext,
    ) -> pb.PushAdapterResponse:
        try:
            peer = peer_key(authorize(role="main_server", action="PushServerAdapter"), context)
            with self.limits.stream("PushServerAdapter", peer):
                round_index, final, blob = read_server_adapter(
                    request_iterator, self.max_adapter_bytes
                )
            # The round names a file: only a round of this run, never a peer-chosen name.
            if not -1 <= round_index < self.state.num_rounds:
                raise WireError(
                    "PushServerAdapter.round",
                    f"={round_index}, expected [-1, {self.state.num_rounds})",
                )
        except REFUSED as err:
            _abort(context, err)
        if self.run_dir is not None:
            save_server_adapter(self.run_dir, round_index, final, blob)
        log.info(
            "server adapter %s (%d bytes)",
            "final" if final else f"after round {round_index}",
            len(blob),
        )
        return pb.PushAdapterResponse(accepted=True, round=max(round_index, 0))

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        snap = self.state.snapshot()
        return pb.StatusResponse(
            round=max(snap.completed_round + 1, 0),
            num_rounds=self.state.num_rounds,
            finished=self.state.finished,
            clients_joined=sorted(snap.joined),
            server_unix_s=time.time(),
        )
