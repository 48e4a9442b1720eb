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
from fed_server.rounds import RoundState
from fedsllm.bootstrap import read_server_adapter
from fedsllm.errors import StateError, WireError
from fedsllm.proto import fed_server_pb2 as pb
from fedsllm.proto import fed_server_pb2_grpc as pb_grpc
from fedsllm.wire.adapters import GlobalHeaderInfo, pull_responses, read_push
from fedsllm.wire.rpc import abort_for

log = logging.getLogger(__name__)

STATUS_OF = {
    WireError: grpc.StatusCode.INVALID_ARGUMENT,
    StateError: grpc.StatusCode.FAILED_PRECONDITION,
    TimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""Domain exception -> gRPC status; anything else is a bug and surfaces as UNKNOWN."""


def _abort(context: grpc.ServicerContext, err: Exception) -> NoReturn:
    abort_for(context, err, STATUS_OF, log)


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
    ) -> None:
        self.state = state
        self.base_hash = base_hash
        """Hash of the frozen base weights; a peer presenting another is refused
        (empty: the first peer to Join with one sets it)."""
        self._base_lock = threading.Lock()
        self.run_dir = run_dir
        """Where the main server's adapter is kept (adapters/server*.safetensors)."""
        self.pace_down = pace_down
        """pace_down(client_id, nbytes, new_message): blocks before each chunk of the
        global adapter goes out, at that client's downlink rate (docs/MODEL.md: omega / R_dl)."""
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
            self._check_hash(request.scenario_hash)
            self._check_base(request.base_hash, f"client {request.client_id}")
            joined = self.state.join(request.client_id, request.num_samples)
        except (WireError, StateError) as err:
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
            header, blob = read_push(request_iterator, self.max_adapter_bytes)
            self.state.submit(header.client_id, header.round, blob, header.num_samples)
        except (WireError, StateError) as err:
            _abort(context, err)
        snap = self.state.snapshot()
        return pb.PushAdapterResponse(
            accepted=True, round=header.round, num_received=len(snap.pending)
        )

    def PullGlobal(
        self, request: pb.PullGlobalRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.PullGlobalResponse]:
        try:
            # client_id picks whose downlink paces the transfer: check it first.
            if not 0 <= request.client_id < self.state.num_clients:
                raise WireError(
                    "client_id", f"{request.client_id} is not in [0, {self.state.num_clients})"
                )
            done, blob = self.state.wait_global_round(request.round, self.pull_timeout_s)
        except (WireError, TimeoutError) as err:
            _abort(context, err)
        header = GlobalHeaderInfo(
            round=max(done, 0),
            has_adapter=blob is not None,
            total_bytes=len(blob) if blob else 0,
            finished=self.state.finished,
        )
        for i, response in enumerate(pull_responses(header, blob, self.chunk_bytes)):
            if self.pace_down is not None:
                self.pace_down(request.client_id, response.ByteSize(), i == 0)
            yield response

    def JoinMainServer(
        self, request: pb.MainServerJoinRequest, context: grpc.ServicerContext
    ) -> pb.MainServerJoinResponse:
        try:
            self._check_hash(request.scenario_hash)
            self._check_base(request.base_hash, "the main server")
        except StateError as err:
            _abort(context, err)
        log.info("main server joined (base %s)", request.base_hash)
        return pb.MainServerJoinResponse(num_rounds=self.state.num_rounds)

    def PushServerAdapter(
        self,
        request_iterator: Iterator[pb.PushServerAdapterRequest],
        context: grpc.ServicerContext,
    ) -> pb.PushAdapterResponse:
        try:
            round_index, final, blob = read_server_adapter(request_iterator, self.max_adapter_bytes)
        except WireError as err:
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
