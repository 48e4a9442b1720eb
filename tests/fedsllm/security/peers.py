"""Real servers with identity on, and channels that call as a chosen peer (tests only)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc

from fedsllm.security.credentials import channel_credentials, load_tls, tls_config_for
from fedsllm.security.identity import Identity, TokenTable, with_token
from fedsllm.wire.rpc import (
    CHANNEL_OPTIONS,
    Security,
    create_server,
    stop_server,
)

NUM_CLIENTS = 3
IDENTITIES = (
    *(Identity.client(k) for k in range(NUM_CLIENTS)),
    Identity("main_server"),
    Identity("fed_server"),
    Identity("launcher"),
    Identity("watcher"),
)
TOKENS = TokenTable(
    {f"test-token-{i}-{str(who).replace('/', '-')}": who for i, who in enumerate(IDENTITIES)}
)
"""Fixed tokens (deterministic tests); the launcher's are random."""
STRANGER_TOKEN = "test-token-nobody-knows-this-one"

CLIENT = [Identity.client(k) for k in range(NUM_CLIENTS)]
MAIN = Identity("main_server")
LAUNCHER = Identity("launcher")
WATCHER = Identity("watcher")


@contextmanager
def serving(
    register: Sequence[Callable[[grpc.Server], None]],
    security: Security | None = None,
) -> Iterator[str]:
    """A real server on 127.0.0.1:0 built with `security` (default: TOKENS); its address."""
    server, port = create_server(
        "127.0.0.1:0", register, security=security or Security(tokens=TOKENS)
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_server(server, grace_s=0.2)


def channel_as(address: str, who: Identity | None, token: str | None = None) -> grpc.Channel:
    """A plain channel whose calls carry `who`'s token (or `token`; neither: none)."""
    channel = grpc.insecure_channel(address, options=list(CHANNEL_OPTIONS))
    if token is None and who is not None:
        token = TOKENS.token_for(who)
    return with_token(channel, token) if token is not None else channel


def tls_channel_as(address: str, cert_dir: Path, who: Identity) -> grpc.Channel:
    """A mutual-TLS channel presenting `who`'s certificate from `cert_dir`."""
    material = load_tls(tls_config_for(cert_dir, who))
    return grpc.secure_channel(
        address, channel_credentials(material), options=list(CHANNEL_OPTIONS)
    )


def code_of(call: Callable[[], object]) -> grpc.StatusCode | None:
    """The status a call ends with (None: it succeeded)."""
    try:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ByteSize"):
            for _ in result:  # drain a response stream
                pass
    except grpc.RpcError as err:
        return err.code()
    return None
