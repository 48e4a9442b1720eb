"""The client's Train stream (grpc.aio, fedsllm.wire.train_client) carries the
process's credentials: its token as call metadata (grpc.aio has no client
interceptor on the path), or its TLS certificate; the main server knows the
caller by them, and refuses a token it does not know before the hello."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch

from client.remote import MainServerStream
from fedsllm.proto import main_server_pb2_grpc
from fedsllm.security.credentials import load_tls, tls_config_for
from fedsllm.security.identity import Identity
from fedsllm.wire.rpc import Security
from fedsllm.wire.status import status_code
from tests.fedsllm.security.peers import STRANGER_TOKEN, TOKENS, serving
from tests.fedsllm.wire.test_train_client import CHUNK, Echo


def _one_step(stream: MainServerStream) -> None:
    acts = torch.zeros(2, 4, 8)
    stream.send_step(0, 0, True, acts, torch.ones(2, 4, dtype=torch.int64), torch.ones(2, 4))
    reply, _ = stream.receive_reply(0, 0)
    stream.close()
    assert reply.grad is not None and torch.equal(reply.grad, acts)


def _register(echo: Echo) -> list:
    return [lambda s: main_server_pb2_grpc.add_MainServerServicer_to_server(echo, s)]


def test_the_stream_presents_its_token() -> None:
    echo = Echo()
    with serving(_register(echo)) as address:
        own = Security(token=TOKENS.token_for(Identity.client(1)))
        _one_step(MainServerStream(address, 1, "h", "float32", CHUNK, security=own))
        with pytest.raises(grpc.RpcError) as info:
            MainServerStream(
                address, 1, "h", "float32", CHUNK, security=Security(token=STRANGER_TOKEN)
            )
    assert echo.callers == [Identity.client(1)]  # the stranger never reached the handler
    assert status_code(info.value) == grpc.StatusCode.UNAUTHENTICATED


def test_the_stream_presents_its_certificate(cert_dir: Path) -> None:
    echo = Echo()
    server = Security(tls=load_tls(tls_config_for(cert_dir, Identity("main_server"))))
    client = Security(tls=load_tls(tls_config_for(cert_dir, Identity.client(2))))
    with serving(_register(echo), server) as address:
        _one_step(MainServerStream(address, 2, "h", "float32", CHUNK, security=client))
    assert echo.callers == [Identity.client(2)]
