"""Who is calling: the caller's identity, taken from the channel, never from a message.

One server interceptor (`IdentityInterceptor`) derives the identity of every
call before its handler runs: from the TLS peer certificate (its
``fedsllm://`` URI SAN, as written by ``fedsllm certs``) when the channel is
mutual TLS, or else from a per-peer token in the ``authorization`` metadata
(``Bearer <token>``), looked up in a `TokenTable`. A call with neither is
ended with UNAUTHENTICATED before the handler is entered, so it touches no
state. Handlers read the identity with `caller(context)` and check it with
`require(...)`, which raises `PermissionDeniedError` (PERMISSION_DENIED in
fedsllm.wire.status). What each RPC allows is left to the roles' services,
with one rule kept here for every server at once: a read-only role
(`READ_ONLY_METHODS`: the `watcher`) is refused with PERMISSION_DENIED by
the interceptor for any method outside its short list, so a method added
later is closed to it until someone opens it on purpose.

Identity URIs: ``fedsllm://client/<id>``, ``fedsllm://main_server``,
``fedsllm://fed_server``, ``fedsllm://controller``, ``fedsllm://launcher``,
``fedsllm://watcher``.
"""

from __future__ import annotations

import contextlib
import contextvars
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import grpc

from fedsllm.errors import FedsLLMError

log = logging.getLogger(__name__)

ROLES = ("client", "main_server", "fed_server", "controller", "launcher", "watcher")
"""Every kind of peer. `controller` is the allocation controller (hosted by the
fed server, or its own process); `launcher` is `fedsllm run` / tools that only
poll health and status; `watcher` is an observer (`fedsllm watch`, a
dashboard) that may only read: see READ_ONLY_METHODS."""

READ_ONLY_METHODS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "watcher": frozenset(
            {
                "/fedsllm.proto.Telemetry/Subscribe",
                "/fedsllm.proto.FedServer/Status",
                "/fedsllm.proto.RunInfo/GetScenario",
            }
        )
    }
)
"""Roles confined to a list of methods (beyond the health service), enforced by
IdentityInterceptor before any handler runs: anything else is PERMISSION_DENIED.
The watcher may follow the telemetry stream, ask the fed server's Status and
read the run's scenario (which every peer gets, and which holds no secret);
it can push nothing, join nothing, and fetch no weights."""

URI_SCHEME = "fedsllm"
TOKEN_METADATA_KEY = "authorization"
TOKEN_PREFIX = "Bearer "
MIN_TOKEN_CHARS = 16
"""A shorter token is refused when a table is built (guessable)."""

HEALTH_METHODS = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch")
"""Methods the interceptor lets through without credentials by default: the
launcher and compose healthchecks poll them, and they reveal nothing. Under
mutual TLS the handshake already requires a certificate."""

_URI_RE = re.compile(r"^fedsllm://(?:client/(0|[1-9][0-9]{0,8})|([a-z_]+))$")


class AuthenticationError(FedsLLMError):
    """The caller presented no usable credentials (no certificate with a
    fedsllm URI, no or an unknown token). Maps to UNAUTHENTICATED."""


class PermissionDeniedError(FedsLLMError):
    """The caller is known but may not do this (another client's id, a role that
    is not the main server). Maps to PERMISSION_DENIED. (Not named
    PermissionError, which would shadow the builtin OSError subclass.)"""


@dataclass(frozen=True, slots=True)
class Identity:
    """A peer: its role and, for a client, its client id."""

    role: str
    """One of ROLES."""
    client_id: int | None = None
    """The client's index (0-based) when role == "client", else None."""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"identity role must be one of {ROLES}, got {self.role!r}")
        if self.role == "client":
            if (
                not isinstance(self.client_id, int)
                or isinstance(self.client_id, bool)
                or self.client_id < 0
            ):
                raise ValueError(
                    f"a client identity needs a client_id >= 0, got {self.client_id!r}"
                )
        elif self.client_id is not None:
            raise ValueError(f"role {self.role} takes no client_id, got {self.client_id!r}")

    @classmethod
    def client(cls, client_id: int) -> Identity:
        return cls("client", client_id)

    @property
    def uri(self) -> str:
        """The URI SAN of this identity's certificate, e.g. ``fedsllm://client/3``."""
        return f"{URI_SCHEME}://{self}"

    @property
    def file_stem(self) -> str:
        """File name stem of its certificate and key: ``client_3``, ``main_server``."""
        return self.role if self.client_id is None else f"client_{self.client_id}"

    @property
    def service_name(self) -> str:
        """Its docker compose service (and DNS) name: ``client-3``, ``main-server``."""
        return self.file_stem.replace("_", "-")

    def __str__(self) -> str:
        return self.role if self.client_id is None else f"client/{self.client_id}"


def parse_identity(text: str) -> Identity:
    """An identity from its URI (``fedsllm://client/3``) or its short form
    (``client/3``, ``main_server``); raises AuthenticationError when malformed."""
    uri = text if text.startswith(f"{URI_SCHEME}://") else f"{URI_SCHEME}://{text}"
    match = _URI_RE.match(uri)
    if match is None:
        raise AuthenticationError(f"not a fedsllm identity: {text!r}")
    if match.group(1) is not None:
        return Identity.client(int(match.group(1)))
    try:
        return Identity(match.group(2))
    except ValueError as err:
        raise AuthenticationError(f"not a fedsllm identity: {text!r} ({err})") from None


def identity_from_certificate(pem: bytes) -> Identity:
    """The identity in a PEM certificate's URI SAN (exactly one fedsllm URI).

    Only parses: whether the certificate is trusted is the TLS handshake's
    business (the server verifies it against the CA before any call)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise AuthenticationError("peer certificate has no subjectAltName") from None
    except ValueError as err:
        raise AuthenticationError(f"peer certificate is not valid PEM: {err}") from None
    uris = [
        u
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith(f"{URI_SCHEME}://")
    ]
    if len(uris) != 1:
        raise AuthenticationError(
            f"peer certificate must carry exactly one {URI_SCHEME}:// URI SAN, got {uris}"
        )
    return parse_identity(uris[0])


class TokenTable:
    """token -> Identity, for channels without TLS. Lookups compare the given
    token with every entry in constant time (hmac.compare_digest), so timing
    does not reveal how much of a token was right or which entry matched."""

    def __init__(self, tokens: Mapping[str, Identity]) -> None:
        entries: list[tuple[bytes, Identity]] = []
        seen: set[Identity] = set()
        for token, identity in tokens.items():
            if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS or not token.isascii():
                raise ValueError(
                    f"token of {identity} must be an ASCII string of >= {MIN_TOKEN_CHARS} chars"
                )
            if not token.isprintable() or " " in token:
                raise ValueError(f"token of {identity} must be printable, without spaces")
            if identity in seen:
                raise ValueError(f"{identity} has more than one token")
            seen.add(identity)
            entries.append((token.encode("ascii"), identity))
        self._entries = tuple(entries)

    @classmethod
    def generate(cls, identities: Iterable[Identity], nbytes: int = 32) -> TokenTable:
        """A fresh random token (secrets.token_urlsafe) for each identity (the launcher's)."""
        return cls({secrets.token_urlsafe(nbytes): identity for identity in identities})

    @classmethod
    def from_identity_map(cls, tokens: Mapping[str, str]) -> TokenTable:
        """From identity -> token, as a scenario or a token file writes it:
        ``{"client/0": "...", "main_server": "..."}``."""
        return cls({token: parse_identity(name) for name, token in tokens.items()})

    def to_identity_map(self) -> dict[str, str]:
        """identity -> token (the inverse of from_identity_map)."""
        return {str(identity): token.decode("ascii") for token, identity in self._entries}

    def token_for(self, identity: Identity) -> str:
        for token, known in self._entries:
            if known == identity:
                return token.decode("ascii")
        raise KeyError(f"no token for {identity}")

    def lookup(self, token: str) -> Identity | None:
        """The identity `token` belongs to, or None."""
        given = token.encode("utf-8", "surrogateescape")
        found = None
        for known, identity in self._entries:
            if hmac.compare_digest(given, known):
                found = identity
        return found

    def __len__(self) -> int:
        return len(self._entries)


def token_metadata(token: str) -> tuple[tuple[str, str]]:
    """The call metadata that carries `token` (for a call made by hand)."""
    return ((TOKEN_METADATA_KEY, f"{TOKEN_PREFIX}{token}"),)


# The identity of the call this thread is serving, set by IdentityInterceptor
# around the handler (and around each step of a streaming response).
_CALLER: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "fedsllm_caller", default=None
)
# True while serving a call of a server built with allow_unauthenticated=True
# (unit tests on loopback): the one case where `authorize` lets a call without
# an identity through.
_OPEN: contextvars.ContextVar[bool] = contextvars.ContextVar("fedsllm_open", default=False)


def caller(context: grpc.ServicerContext) -> Identity:
    """The identity of the call `context` belongs to, as IdentityInterceptor derived it.

    Call it in the handler's own thread (a thread the handler starts does not
    inherit it: read it first and pass it on). Raises AuthenticationError when
    the server has no IdentityInterceptor (a wiring bug, never a trusted default)."""
    identity = _CALLER.get()
    if identity is None:
        raise AuthenticationError(
            "no caller identity for this call: the server was built without IdentityInterceptor"
        )
    return identity


@contextlib.contextmanager
def calling_as(identity: Identity) -> Iterator[None]:
    """Serve, inside the block and in this thread, as if IdentityInterceptor had
    derived `identity` for the call: for code that invokes a handler in process
    (unit tests with a fake context). Nothing on the wire can reach it."""
    token = _CALLER.set(identity)
    try:
        yield
    finally:
        _CALLER.reset(token)


def caller_or_none() -> Identity | None:
    """The identity of the call being served, or None on a server built with
    allow_unauthenticated=True (fedsllm.wire.rpc.create_server: unit tests).
    Handlers then fall back to the ids in the messages; `authorize` is the one
    place that decides this."""
    return _CALLER.get()


def authorize(
    *,
    role: str | Collection[str],
    client_id: int | None = None,
    action: str = "make this call",
) -> Identity | None:
    """`require` on the current call's identity. For a client, `client_id` is
    the id the message claims: only its own passes. Without an identity, a
    no-op (None) only on a server built with allow_unauthenticated=True;
    anywhere else AuthenticationError (UNAUTHENTICATED): message ids are
    never trusted."""
    identity = _CALLER.get()
    if identity is None:
        if _OPEN.get():
            return None
        raise AuthenticationError(
            f"may not {action}: no caller identity (the server has no credentials configured)"
        )
    return require(identity, role=role, client_id=client_id, action=action)


def require(
    identity: Identity,
    *,
    role: str | Collection[str],
    client_id: int | None = None,
    action: str = "make this call",
) -> Identity:
    """Check that `identity` has `role` (one role or several) and, when
    `client_id` is given, is that client; returns it. Raises
    PermissionDeniedError naming the caller, what it tried and what is needed."""
    roles = (role,) if isinstance(role, str) else tuple(role)
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ValueError(f"unknown roles {unknown}; known: {ROLES}")
    if identity.role not in roles:
        raise PermissionDeniedError(f"{identity} may not {action}: only {' or '.join(roles)} may")
    if client_id is not None and identity.client_id != client_id:
        raise PermissionDeniedError(
            f"{identity} may not {action} as client {client_id}: a client acts only as itself"
        )
    return identity


def check_read_only(identity: Identity, method: str) -> None:
    """PermissionDeniedError when `identity`'s role is confined to
    READ_ONLY_METHODS and `method` (``/package.Service/Method``) is not among them."""
    allowed = READ_ONLY_METHODS.get(identity.role)
    if allowed is None or method in allowed:
        return
    short = ", ".join(sorted(m.rsplit(".", 1)[-1] for m in allowed))
    raise PermissionDeniedError(
        f"{identity} may not call {method.rsplit('.', 1)[-1]}: a {identity.role} is "
        f"read-only and may call only {short} (and the health service)"
    )


def identity_from_auth_context(auth: Mapping[str, Sequence[bytes]]) -> Identity | None:
    """The identity of a TLS peer from grpc's auth context, or None when the
    call did not come over TLS. grpc fills the context only after the handshake
    verified the certificate against the CA; its ``peer_uri`` property holds the
    certificate's URI SANs (grpcio 1.85), with the PEM as a fallback."""
    if auth.get("transport_security_type") != [b"ssl"]:
        return None
    uris = [u.decode("ascii", "replace") for u in auth.get("peer_uri", ())]
    ours = [u for u in uris if u.startswith(f"{URI_SCHEME}://")]
    if len(ours) == 1:
        return parse_identity(ours[0])
    if len(ours) > 1:
        raise AuthenticationError(f"peer certificate names more than one identity: {ours}")
    pems = auth.get("x509_pem_cert")
    if not pems:
        raise AuthenticationError("TLS peer presented no certificate")
    return identity_from_certificate(pems[0])


def _metadata_token(metadata: Iterable[Any] | None) -> str | None:
    for key, value in metadata or ():
        if key == TOKEN_METADATA_KEY:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            token = text[len(TOKEN_PREFIX) :] if text.startswith(TOKEN_PREFIX) else text
            return token.strip() or None
    return None


class IdentityInterceptor(grpc.ServerInterceptor):
    """Derives each call's identity from the channel and makes it `caller(context)`.

    Order: a TLS peer certificate (verified by the handshake against the CA)
    gives the identity; without TLS, the ``authorization: Bearer <token>``
    metadata is looked up in `tokens`. With neither, or with an unknown token,
    the call is aborted with UNAUTHENTICATED and the handler is never entered.
    `exempt` methods (default: the health service) run without an identity.
    `tls`: whether the server has TLS (only for the refusal's wording when it
    has no token table either). `allow_unauthenticated` (unit tests on
    loopback): a call without any credentials runs with no caller, and
    `authorize` lets it through. Works for all four handler shapes.
    """

    def __init__(
        self,
        tokens: TokenTable | None = None,
        *,
        exempt: Collection[str] = HEALTH_METHODS,
        allow_unauthenticated: bool = False,
        tls: bool = True,
    ) -> None:
        self._tokens = tokens
        self._tls = tls
        self._exempt = frozenset(exempt)
        self._open = allow_unauthenticated

    def identify(self, context: grpc.ServicerContext) -> Identity | None:
        """The caller's identity; raises AuthenticationError with the reason.
        None only when built with allow_unauthenticated and the call brings
        no credentials it can check."""
        from_tls = identity_from_auth_context(context.auth_context())
        if from_tls is not None:
            return from_tls
        token = _metadata_token(context.invocation_metadata())
        if self._open and (token is None or self._tokens is None):
            return None  # open (unit tests): a token it has no table for is ignored
        if self._tokens is None and not self._tls:
            raise AuthenticationError(
                "this server has no credentials configured (neither mutual TLS nor peer "
                "tokens): it refuses every call"
            )
        if self._tokens is None:
            raise AuthenticationError(
                "this server requires mutual TLS: connect with a certificate from its CA"
            )
        if token is None:
            raise AuthenticationError(
                f"no credentials: send '{TOKEN_METADATA_KEY}: {TOKEN_PREFIX}<token>' metadata "
                "or connect with mutual TLS"
            )
        identity = self._tokens.lookup(token)
        if identity is None:
            raise AuthenticationError("unknown token")
        return identity

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in self._exempt:
            return handler
        if not hasattr(handler, "_replace"):
            # Fail closed: a handler that cannot be wrapped would run unauthenticated.
            log.error("cannot wrap handler of %s (%r): refusing the method", method, handler)
            return None
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._wrap_unary(handler.unary_unary, method))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._wrap_unary(handler.stream_unary, method))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._wrap_stream(handler.unary_stream, method))
        return handler._replace(stream_stream=self._wrap_stream(handler.stream_stream, method))

    def _authenticate(self, context: grpc.ServicerContext, method: str) -> Identity | None:
        try:
            identity = self.identify(context)
        except AuthenticationError as err:
            log.warning("refused %s from %s: UNAUTHENTICATED: %s", method, context.peer(), err)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{method}: {err}")
            raise  # unreachable: abort raises
        if identity is not None:
            try:
                check_read_only(identity, method)
            except PermissionDeniedError as err:
                peer = context.peer()
                log.warning("refused %s from %s: PERMISSION_DENIED: %s", method, peer, err)
                context.abort(grpc.StatusCode.PERMISSION_DENIED, str(err))
        return identity

    def _wrap_unary(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            identity = self._authenticate(context, method)
            token, opened = _CALLER.set(identity), _OPEN.set(self._open)
            try:
                return behavior(request, context)
            finally:
                _OPEN.reset(opened)
                _CALLER.reset(token)

        return wrapped

    def _wrap_stream(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            identity = self._authenticate(context, method)
            token, opened = _CALLER.set(identity), _OPEN.set(self._open)
            try:
                responses = behavior(request, context)
            finally:
                _OPEN.reset(opened)
                _CALLER.reset(token)
            return _with_caller(identity, responses, self._open)

        return wrapped


def _with_caller(
    identity: Identity | None, responses: Iterator[Any], is_open: bool = False
) -> Iterator[Any]:
    """Re-enter the caller's identity around each step of a response generator
    (its body runs later, on each next(), outside the wrapper's scope)."""
    iterator = iter(responses)
    try:
        while True:
            token, opened = _CALLER.set(identity), _OPEN.set(is_open)
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                _OPEN.reset(opened)
                _CALLER.reset(token)
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


class TokenClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call of a channel."""

    def __init__(self, token: str) -> None:
        self._metadata = token_metadata(token)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), *self._metadata]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


def with_token(channel: grpc.Channel, token: str) -> grpc.Channel:
    """`channel` with `token` attached to every call (insecure-mode clients)."""
    return grpc.intercept_channel(channel, TokenClientInterceptor(token))
