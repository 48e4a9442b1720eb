"""Controller gRPC servicer: decode, call the Controller, encode, map errors.

Thin by design: every rule lives in fed_server/controller.py; this module
only turns protobuf into plain records (fedsllm.wire.messages) and domain
exceptions into status codes. Subscribe holds one worker thread per stream
and ends when the controller closes or the client goes away.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, NoReturn

import grpc

from fed_server.controller import Controller
from fedsllm.proto import controller_pb2 as pb
from fedsllm.proto import controller_pb2_grpc as pb_grpc
from fedsllm.security.identity import authorize
from fedsllm.security.limits import PeerLimits, peer_key
from fedsllm.wire.messages import (
    ChannelReplyInfo,
    allocation_to_proto,
    channel_reply_to_proto,
    channel_report_from_proto,
    register_from_proto,
    register_reply_to_proto,
)
from fedsllm.wire.status import REFUSED, abort_for

log = logging.getLogger(__name__)


SUBSCRIBE_POLL_S = 0.5
"""How often an idle Subscribe stream checks that its client is still there."""


def _abort(context: grpc.ServicerContext, err: Exception) -> NoReturn:
    abort_for(context, err, log)


class ControllerService(pb_grpc.ControllerServicer):
    def __init__(self, controller: Controller, poll_s: float = SUBSCRIBE_POLL_S) -> None:
        self.controller = controller
        self.poll_s = poll_s
        self.limits = PeerLimits()
        """Register rate and Subscribe streams per peer."""

    def Register(
        self, request: pb.RegisterRequest, context: grpc.ServicerContext
    ) -> pb.RegisterResponse:
        try:
            peer = authorize(role="client", client_id=request.client_id, action="Register")
            self.limits.check_rate("Register", peer_key(peer, context))
            reply = self.controller.register(register_from_proto(request))
        except REFUSED as err:
            _abort(context, err)
        return register_reply_to_proto(reply)

    def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AllocationUpdate]:
        controller = self.controller
        try:
            peer = authorize(
                role="client", client_id=request.client_id, action="read this allocation"
            )
            client_id = controller.check_client("SubscribeRequest.client_id", request.client_id)
            live = self.limits.stream_for_call("Subscribe", peer_key(peer, context), context)
        except REFUSED as err:
            _abort(context, err)
        if not live:
            return
        # A cancelled stream wakes its waiter at once instead of at the next poll.
        context.add_callback(controller.wake)
        after = 0
        log.info("controller: client %d subscribed", client_id)
        while context.is_active():
            info = controller.wait_update(client_id, after, self.poll_s)
            if info is None:
                if controller.closed:
                    break
                continue
            after = info.version
            yield allocation_to_proto(info)
        log.info("controller: subscription of client %d ended", client_id)

    def ReportChannel(
        self, request: pb.ReportChannelRequest, context: grpc.ServicerContext
    ) -> pb.ReportChannelResponse:
        try:
            authorize(role="client", client_id=request.client_id, action="ReportChannel")
            version = self.controller.report_channel(channel_report_from_proto(request))
        except REFUSED as err:
            _abort(context, err)
        return channel_reply_to_proto(ChannelReplyInfo(version=version))


def serve_controller(
    controller: Controller, bind: str, security: Any = None
) -> tuple[grpc.Server, int]:
    """A gRPC server for `controller` alone (with health), as the fed server hosts
    it on its own port and `python -m fed_server.controller_main` runs it, with
    that process's credentials `security` (fedsllm.wire.rpc.Security)."""
    from fedsllm.wire.rpc import CONTROLLER_SERVICE, create_server

    service = ControllerService(controller)
    return create_server(
        bind,
        [lambda s: pb_grpc.add_ControllerServicer_to_server(service, s)],
        service_names=(CONTROLLER_SERVICE,),
        security=security,
    )
