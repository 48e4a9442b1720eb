"""Telemetry over gRPC: the collector's servicer, a sender's push, and a watcher.

`TelemetryService` decodes, calls fedsllm.telemetry.collector, encodes, and
ends refused calls through the project's one error table (fedsllm.wire.status:
a malformed record is INVALID_ARGUMENT, a closed collector FAILED_PRECONDITION;
a sender keeps what was refused in its spool and retries). `grpc_push`
is the transport a TelemetrySender is given. `TelemetryWatcher` follows a
collector's Subscribe stream in a thread (reconnecting from the next index
when the stream breaks), for `fedsllm run`'s progress and any other tool.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from fedsllm.errors import ResourceLimitError, StateError, WireError
from fedsllm.proto import telemetry_pb2 as pb
from fedsllm.proto import telemetry_pb2_grpc as pb_grpc
from fedsllm.security.identity import PermissionDeniedError, authorize
from fedsllm.security.limits import PeerLimits, peer_key
from fedsllm.telemetry.codec import (
    record_from_proto,
    record_to_proto,
    role_from_proto,
    role_to_proto,
)
from fedsllm.telemetry.collector import TelemetryCollector
from fedsllm.telemetry.records import TelemetryRecord, source_name
from fedsllm.telemetry.sender import Push, TelemetrySender
from fedsllm.wire.status import abort_for, status_code

log = logging.getLogger(__name__)

TELEMETRY_SERVICE = "fedsllm.proto.Telemetry"


WATCH_ROLES = ("launcher", "fed_server", "controller", "watcher")
"""Who may Subscribe: every role's records, for the run's own watchers and the
read-only `watcher` identity (fedsllm watch, a dashboard); never a client or
the main server."""


class TelemetryService(pb_grpc.TelemetryServicer):
    def __init__(
        self, collector: TelemetryCollector, poll_s: float = 0.5, limits: PeerLimits | None = None
    ) -> None:
        self.collector = collector
        self.poll_s = poll_s
        self.limits = PeerLimits() if limits is None else limits
        """Subscribe streams per peer (the same bound as the fed server's streams),
        shared by every server this service is registered on (fed port, control
        port, the run's socket): the launcher holds two (progress, round tracker)."""

    def Push(
        self, request: pb.PushTelemetryRequest, context: grpc.ServicerContext
    ) -> pb.PushTelemetryResponse:
        try:
            role = role_from_proto(request.role)
            # Records are pushed as the channel's identity only (a client as itself).
            # A client's refusal adds "as client <id>" itself (require), so the
            # action names the role only for the others.
            authorize(
                role=role,
                client_id=request.source_client if role == "client" else None,
                action="push telemetry" if role == "client" else f"push telemetry as {role}",
            )
            source = source_name(role, request.source_client)
            records = [record_from_proto(m) for m in request.records]
            for i, rec in enumerate(records):
                if rec.source != source:
                    raise WireError(
                        f"records[{i}]", f"comes from {rec.source}, the request from {source}"
                    )
                if rec.seq < 1:
                    raise WireError(f"records[{i}].seq", f"{rec.seq} is not a sequence number")
            if records:
                acked = self.collector.store(records, final=request.final)
            elif request.final:
                acked = self.collector.finish(source)
            else:
                acked = self.collector.acked(source)
        except (WireError, StateError, PermissionDeniedError) as err:
            abort_for(context, err, log)
        return pb.PushTelemetryResponse(acked_seq=acked)

    def Subscribe(
        self, request: pb.SubscribeTelemetryRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SubscribeTelemetryResponse]:
        try:  # every role's records: for the run's own watchers only
            peer = authorize(role=WATCH_ROLES, action="watch telemetry")
            live = self.limits.stream_for_call("Subscribe", peer_key(peer, context), context)
        except (PermissionDeniedError, ResourceLimitError) as err:
            abort_for(context, err, log)
        if not live:
            return
        index = request.from_index
        while context.is_active():
            records, closed = self.collector.wait_from(index, self.poll_s)
            for rec in records:
                yield pb.SubscribeTelemetryResponse(
                    index=index,
                    record=record_to_proto(rec),
                    collector_id=self.collector.instance_id,
                )
                index += 1
            if closed and not records:
                return


def add_to_server(service: TelemetryService) -> Callable[[grpc.Server], None]:
    """For fedsllm.wire.rpc.create_server's `register` list."""
    return lambda server: pb_grpc.add_TelemetryServicer_to_server(service, server)


def grpc_push(
    channel: grpc.Channel, role: str, client_id: int = -1, timeout_s: float = 5.0
) -> Push:
    """A TelemetrySender's transport: one Push call with a deadline, no retry
    (the sender retries from its spool)."""
    stub = pb_grpc.TelemetryStub(channel)
    role_value = role_to_proto(role)
    source_client = client_id if role == "client" else -1

    def push(records: Sequence[pb.TelemetryRecord], final: bool) -> int:
        request = pb.PushTelemetryRequest(
            role=role_value, source_client=source_client, records=records, final=final
        )
        return int(stub.Push(request, timeout=timeout_s).acked_seq)

    return push


REFUSED_RETRY_MAX_S = 5.0
"""After its credentials were refused, a watcher asks again at most this often
(doubling from retry_s): a server restarted with a table that knows them
lets it in, and a wrong token does not flood the server's log."""


class TelemetryWatcher:
    """Follows a collector's records live from `from_index`, in a thread.

    `poll()` returns the records received since the last call, each once. The
    stream is reopened from the next index whenever it breaks (the fed server
    not up yet, or gone), until `close()`; from 0, dropping records already
    delivered, when the collector restarted (its indexes changed).

    A refusal of its credentials (UNAUTHENTICATED: none or an unknown token;
    PERMISSION_DENIED: an identity that may not watch) is not retried in
    silence: it is logged once at WARNING naming the credential
    (fedsllm.roles.credential_error) and kept in `refused` until a stream
    delivers again; meanwhile the watcher asks again with a growing pause, at
    most REFUSED_RETRY_MAX_S. `ended` is set while the last stream was ended
    by the server (its collector closed: the fed server stopping).
    """

    def __init__(
        self,
        address: str,
        from_index: int = 0,
        retry_s: float = 0.2,
        security: Any = None,
        *,
        report_refusal: bool = True,
    ) -> None:
        from fedsllm.wire.rpc import make_channel

        self.address = address
        self.security = security
        """The watcher's credentials (fedsllm.wire.rpc.Security; None: none)."""
        self.report_refusal = report_refusal
        """Log a refusal at WARNING (False: the caller reports `refused` itself)."""
        self.next_index = from_index
        self.retry_s = retry_s
        self.refused: Exception | None = None
        """The refusal of this watcher's credentials (a fedsllm.bootstrap.SettingError
        naming where they came from), None while none is standing."""
        self.ended = threading.Event()
        """Set when the server ended the last stream (its collector closed), cleared
        when a stream delivers again (a fed server restarted)."""
        self._queue: queue.SimpleQueue[TelemetryRecord] = queue.SimpleQueue()
        self._collector_id = ""
        self._seen: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._call: grpc.Call | None = None
        self._lock = threading.Lock()
        self._channel = make_channel(address, security)
        self._stub = pb_grpc.TelemetryStub(self._channel)
        self._thread = threading.Thread(target=self._follow, name="telemetry-watch", daemon=True)
        self._thread.start()

    def poll(self) -> list[TelemetryRecord]:
        out: list[TelemetryRecord] = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def close(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()
        self._thread.join(timeout_s)
        self._channel.close()

    def _reconnect(self) -> None:
        from fedsllm.wire.rpc import make_channel

        with self._lock:
            old = self._channel
            self._channel = make_channel(self.address, self.security)
            self._stub = pb_grpc.TelemetryStub(self._channel)
        old.close()

    def _on_refused(self, err: grpc.RpcError) -> None:
        """Keep the refusal and say so once (until a stream delivers again)."""
        from fedsllm.roles import credential_error

        refusal = credential_error(err, self.security, f"the telemetry server at {self.address}")
        first = self.refused is None
        self.refused = refusal if refusal is not None else RuntimeError(str(err))
        if first and self.report_refusal:
            log.warning(
                "telemetry watch refused, asking again every %.0f s at most: %s",
                REFUSED_RETRY_MAX_S,
                self.refused,
            )

    def _follow(self) -> None:
        pause_s = self.retry_s
        while not self._stop.is_set():
            call = self._stub.Subscribe(pb.SubscribeTelemetryRequest(from_index=self.next_index))
            with self._lock:
                self._call = call
            if self._stop.is_set():
                call.cancel()
                return
            restarted = False
            try:
                for message in call:
                    if self.refused is not None or self.ended.is_set():
                        self.refused = None
                        self.ended.clear()
                    pause_s = self.retry_s
                    if message.collector_id != self._collector_id:
                        restarted = bool(self._collector_id) and self.next_index > 0
                        self._collector_id = message.collector_id
                        if restarted:  # its indexes are not the old ones: start over
                            self.next_index = 0
                            call.cancel()
                            break
                    if message.index < self.next_index:
                        continue
                    self.next_index = message.index + 1
                    rec = record_from_proto(message.record)
                    key = (rec.source, rec.seq)
                    if key not in self._seen:
                        self._seen.add(key)
                        self._queue.put(rec)
                if not restarted:
                    self.ended.set()  # the server ended the stream: its collector closed
            except grpc.RpcError as err:
                code = status_code(err)
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    self._on_refused(err)
                    self._stop.wait(pause_s)
                    pause_s = min(2 * pause_s, REFUSED_RETRY_MAX_S)
                    # A fresh channel, in case the refusal was of the connection's
                    # state rather than of the token (a server restarted meanwhile).
                    self._reconnect()
                    continue
                log.debug("telemetry watch of %s broke: %s", self.address, err)
            except WireError as err:
                log.warning("telemetry watch of %s: unreadable record: %s", self.address, err)
            self._stop.wait(self.retry_s)


def start_sender(
    channel: grpc.Channel, role_dir: Path, role: str, client_id: int = -1
) -> TelemetrySender:
    """A running TelemetrySender for this process, pushing over `channel` (to the
    fed server) and spooling under `role_dir`/spool."""
    from fedsllm.telemetry import spool_dir

    return TelemetrySender(
        grpc_push(channel, role, client_id),
        spool_dir(role_dir),
        source_name(role, client_id if role == "client" else -1),
    )
