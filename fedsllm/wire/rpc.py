"""Every gRPC server and channel of the project is built here.

One set of channel options (message size, keepalive) is applied to both
ends; every server gets the standard health service (grpc.health.v1), so
the launcher and compose healthchecks ask instead of sleeping, and the
methods that stream tensors get their own (de)serializers (the Train
method's chunk codec, fedsllm.wire.train) in place of the generated
protobuf ones, whichever way the servicer was registered; servers stop
with a grace period; client calls carry a deadline, and the one
retry-with-backoff function (call_with_retry) and the clients' reconnect
policy (RetryPolicy: backoff with jitter, a budget per outage) live here.
What the services do is left to the roles' service.py modules.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from fedsllm.errors import ReconnectError
from fedsllm.wire.retry import backoff_delays
from fedsllm.wire.status import status_code, status_details

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_MESSAGE_BYTES = 64 * 2**20
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000

# Fully qualified service names, as the health service and reflection see them.
MAIN_SERVER_SERVICE = "fedsllm.proto.MainServer"
FED_SERVER_SERVICE = "fedsllm.proto.FedServer"
CONTROLLER_SERVICE = "fedsllm.proto.Controller"

MAX_RECONNECT_BACKOFF_MS = 5_000

# Both ends: large-enough messages (streams of 1 MiB chunks never need them,
# but a unary reply may), and keepalive pings that the server is told to
# accept, so an idle Train stream or Subscribe survives and a dead peer is
# noticed (a ping unanswered for gRPC's ping timeout, 60 s by default, ends
# the transport). A peer that was only stopped (SIGSTOP) for that long is
# cut off too, and comes back through the callers' reconnect (RetryPolicy;
# tests/client/test_sigstop.py). The channel's own reconnect backoff is
# capped low (gRPC's default grows to 120 s), so a restarted server is found
# within seconds.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
)
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    *CHANNEL_OPTIONS,
    # The name gRPC core reads (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS);
    # "min_recv_..." was ignored, leaving 5 min: idle streams got GOAWAY too_many_pings.
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
    # Port 0 and free_port() must give a port nobody else listens on.
    ("grpc.so_reuseport", 0),
)


MAX_SERVER_WORKERS = 4096
"""Worker threads a server may grow to. gRPC's sync server parks one thread
per in-flight RPC: every client's Train stream on the main server, every
waiting PullGlobal on the fed server. A pool of 32 deadlocked round 0 at 33
clients (the 33rd stream never got a thread, so its welcome never came).
ThreadPoolExecutor starts threads only when work arrives and no idle one is
free, so an idle cap costs nothing; the figure is there to fail loudly (a
queued RPC) long before the host runs out of threads, not to ration work.
Threads were kept over grpc.aio because every handler and the main server's
compute queue are synchronous, and one thread per client costs only its
stack pages actually touched (about 100 kB each)."""


class CodecInterceptor(grpc.ServerInterceptor):
    """Swaps the (de)serializers of the methods in `codecs` (full method name ->
    (request_deserializer, response_serializer)); the handler is untouched."""

    def __init__(
        self, codecs: Mapping[str, tuple[Callable[[bytes], Any], Callable[[Any], bytes]]]
    ) -> None:
        self._codecs = dict(codecs)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        codec = self._codecs.get(handler_call_details.method)
        if handler is None or codec is None or not hasattr(handler, "_replace"):
            return handler
        return handler._replace(request_deserializer=codec[0], response_serializer=codec[1])


def create_server(
    address: str,
    register: Sequence[Callable[[grpc.Server], None]],
    *,
    service_names: Sequence[str] = (),
    max_workers: int = MAX_SERVER_WORKERS,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    security: Security | None = None,
    allow_unauthenticated: bool = False,
) -> tuple[grpc.Server, int]:
    """Build, bind and start a server; returns it and the bound port.

    `register` holds callables such as
    ``lambda s: add_MainServerServicer_to_server(servicer, s)``.
    `service_names` are marked SERVING in the health service next to "".
    gRPC's sync server holds one worker thread per in-flight RPC (a Train
    stream, a blocked PullGlobal wait) for as long as it lasts, so the pool
    is no cap on work: see MAX_SERVER_WORKERS. `address` may use port 0.

    `security` is the building process's credentials (its __main__ builds them:
    fedsllm.roles.role_security); None means none. Every call but the health
    service's needs an identity from the channel (a TLS certificate or a
    token of `security.tokens`), so a server without credentials refuses them
    all with UNAUTHENTICATED, unless built with `allow_unauthenticated=True`
    (unit tests on loopback only): then handlers see no caller and
    fedsllm.security.identity.authorize lets calls through.
    """
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from fedsllm.wire.train import TRAIN_METHOD, TRAIN_SERVER_CODEC

    security = NO_SECURITY if security is None else security
    if allow_unauthenticated and security.authenticates:
        raise ValueError("allow_unauthenticated is for servers without credentials")
    identity = [security.interceptor(allow_unauthenticated=allow_unauthenticated)]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=list(SERVER_OPTIONS),
        # Identity first: a call without credentials is refused before anything else runs.
        interceptors=[
            *identity,
            CodecInterceptor({TRAIN_METHOD: TRAIN_SERVER_CODEC}),
            *interceptors,
        ],
    )
    for add in register:
        add(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # Asked first, so the common refusal (a port in use) says so in a word,
    # without gRPC's own error line; gRPC's bind below still decides.
    busy = bind_problem(address)
    if busy == ADDRESS_IN_USE:
        raise BindError(address, busy)
    try:
        if security.tls is not None and not _is_unix(address):
            from fedsllm.security.credentials import server_credentials

            port = server.add_secure_port(address, server_credentials(security.tls))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as err:
        raise BindError(address, bind_problem(address) or f"gRPC: {err}") from err
    for name in ("", *service_names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    server.start()
    log.info(
        "gRPC server on %s (port %d) serving %s",
        address,
        port,
        ", ".join(service_names) or "health only",
    )
    return server, port


ADDRESS_IN_USE = "address in use"


class BindError(OSError):
    """create_server could not bind `address`; `reason` says why in a few words
    ("address in use", ...), for a message naming the flag that gave it."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"cannot bind gRPC server to {address}: {reason}")


def bind_problem(address: str) -> str | None:
    """Why a TCP listener cannot bind `address` (host:port, [v6]:port) now, in a
    few words, or None when it can (or the address is not one to ask about: a
    unix socket, port 0, a gRPC URI). Asks the kernel with a socket bound as
    gRPC binds its own (SO_REUSEADDR, no SO_REUSEPORT) and closed at once; the
    address is refused only when every address the host resolves to (in a
    family this host has) is."""
    import errno

    if _is_unix(address) or "://" in address or address.startswith(("ipv4:", "ipv6:")):
        return None
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) == 0:
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        infos = socket.getaddrinfo(
            host or None, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as err:
        return f"cannot resolve host {host!r} ({getattr(err, 'strerror', None) or err})"
    reasons = []
    for family, kind, proto, _, sockaddr in infos:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:
            continue  # a family this host lacks (no IPv6): gRPC falls back, so not asked
        with sock:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(sockaddr)
                return None
            except OSError as err:
                reasons.append(err.errno)
    words = {
        errno.EADDRINUSE: ADDRESS_IN_USE,
        errno.EADDRNOTAVAIL: "not an address of this host",
        errno.EACCES: "permission denied (a port below 1024 needs privileges)",
    }
    if not reasons:
        return None  # nothing could be asked: gRPC's bind decides
    if reasons[0] is None:
        return "cannot bind"
    return words.get(reasons[0]) or os.strerror(reasons[0])


def stop_server(server: grpc.Server, grace_s: float = 2.0) -> None:
    """Stop accepting calls, let running ones finish for `grace_s`, then cancel them."""
    server.stop(grace_s).wait()


def make_channel(address: str, security: Security | None = None) -> grpc.Channel:
    """A channel with the project's options (same as the servers') and the
    caller's credentials `security` (None: none): mutual TLS when configured
    (not on a unix socket, which only this host can reach), and its token on
    every call when it has one."""
    security = NO_SECURITY if security is None else security
    credentials = _tls_credentials(address, security)
    if credentials is not None:
        channel = grpc.secure_channel(address, credentials, options=list(CHANNEL_OPTIONS))
    else:
        channel = grpc.insecure_channel(address, options=list(CHANNEL_OPTIONS))
    if security.token is not None:
        from fedsllm.security.identity import with_token

        return with_token(channel, security.token)
    return channel


def make_aio_channel(address: str, security: Security | None = None) -> grpc.aio.Channel:
    """make_channel's grpc.aio twin (the same options and credentials), for
    the client's Train stream (fedsllm.wire.train_client). Call it inside the
    event loop that will run the channel's calls. A token is not attached
    here: grpc.aio's client interceptors pass every message of a stream
    through a queue of their own (grpc/aio/_interceptor.py), so the calls
    carry `security.call_metadata()` themselves."""
    credentials = _tls_credentials(address, NO_SECURITY if security is None else security)
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=list(CHANNEL_OPTIONS))
    return grpc.aio.insecure_channel(address, options=list(CHANNEL_OPTIONS))


def _tls_credentials(address: str, security: Security) -> grpc.ChannelCredentials | None:
    """The channel's mutual-TLS credentials, or None: no TLS configured, or a
    unix socket (which only this host can reach)."""
    if security.tls is None or _is_unix(address):
        return None
    from fedsllm.security.credentials import channel_credentials

    return channel_credentials(security.tls)


def _is_unix(address: str) -> bool:
    return address.startswith(("unix:", "unix-abstract:"))


# ---------------------------------------------------------------- credentials

TOKEN_ENV = "FEDSLLM_TOKEN"
"""This process's own bearer token (for channels without TLS)."""
TOKEN_FILE_ENV = "FEDSLLM_TOKEN_FILE"
"""A file holding this process's token (the launcher writes it into the role's
private directory: a token never appears on a command line)."""
PEER_TOKENS_ENV = "FEDSLLM_PEER_TOKENS"
"""A JSON file mapping identity -> token (``{"client/0": "..."}``): the tokens
this process's servers accept."""
INSECURE_ENV = "FEDSLLM_INSECURE"
"""1: plain gRPC on a non-loopback address is allowed (with a warning)."""


@dataclass(frozen=True)
class Security:
    """This process's credentials, as every server and channel it builds uses them."""

    tls: Any = None
    """fedsllm.security.credentials.TlsMaterial, or None for plain channels."""
    token: str | None = None
    """The token this process presents on plain channels."""
    tokens: Any = None
    """fedsllm.security.identity.TokenTable of the peers its servers accept."""
    insecure: bool = False
    """--insecure / FEDSLLM_INSECURE=1 was asked for."""
    tls_sources: tuple[tuple[str, str], ...] = ()
    """(source, path) of the CA, the certificate and the key, in that order: the
    flag, variable or scenario field that named each file (for messages)."""
    token_source: tuple[str, str] = ("", "")
    """(FEDSLLM_TOKEN, "") or (FEDSLLM_TOKEN_FILE, its path): where `token` came
    from (for messages, which never show a token)."""

    @property
    def authenticates(self) -> bool:
        """Whether this process's servers can derive an identity for a call.
        Without TLS or tokens they refuse every call but health checks."""
        return self.tls is not None or self.tokens is not None

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata that presents this process's token on a call made
        without make_channel's interceptor (make_aio_channel); () without one."""
        if self.token is None:
            return ()
        from fedsllm.security.identity import token_metadata

        return token_metadata(self.token)

    def interceptor(self, *, allow_unauthenticated: bool = False) -> grpc.ServerInterceptor:
        from fedsllm.security.identity import IdentityInterceptor

        return IdentityInterceptor(
            self.tokens, allow_unauthenticated=allow_unauthenticated, tls=self.tls is not None
        )

    def describe(self) -> str:
        """One phrase for logs and the run's report."""
        if self.tls is not None:
            return "mutual TLS"
        if self.tokens is not None or self.token is not None:
            return "plain gRPC, per-peer tokens" + (" (--insecure)" if self.insecure else "")
        return "plain gRPC, no credentials (servers refuse every call)"

    def credential(self) -> tuple[str, str]:
        """(source, file) of what this process presents as its identity, for
        a message that names it: its certificate under TLS (e.g. ("--tls-cert",
        "certs/client_0.pem")), else its token ("FEDSLLM_TOKEN", "") or token
        file; ("", "") when it has none."""
        if self.tls is not None:
            return self.tls_sources[1] if len(self.tls_sources) == 3 else ("--tls-cert", "")
        if self.token is not None:
            return self.token_source if self.token_source[0] else (TOKEN_ENV, "")
        return ("", "")

    def check_bind(self, address: str) -> str | None:
        """The insecure-address rule (fedsllm.security.credentials.check_insecure)
        for a server of this process on `address`: None when fine, the warning
        text when allowed by --insecure; ConfigError when refused."""
        if self.tls is not None and not _is_unix(address):
            return None
        from fedsllm.security.credentials import check_insecure

        return check_insecure(address, self.insecure)


NO_SECURITY = Security()
"""No credentials (immutable): plain channels without a token."""


def security_from_env(
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    scenario_tls: Mapping[str, Any] | None = None,
    insecure: bool = False,
) -> Security:
    """TLS files from flags > FEDSLLM_TLS_* > the scenario's tls section; the
    token from FEDSLLM_TOKEN or FEDSLLM_TOKEN_FILE; peers' tokens from
    FEDSLLM_PEER_TOKENS. ConfigError (naming the source) when one is unusable."""
    import json
    import os
    from pathlib import Path

    from fedsllm.errors import ConfigError
    from fedsllm.security.credentials import load_tls, resolve_tls
    from fedsllm.security.identity import TokenTable

    env = os.environ if env is None else env
    config = resolve_tls(flags, env, scenario_tls)
    tls = load_tls(config) if config is not None else None
    token = env.get(TOKEN_ENV) or None
    token_source = (TOKEN_ENV, "") if token is not None else ("", "")
    token_file = env.get(TOKEN_FILE_ENV)
    if token is None and token_file:
        try:
            token = Path(token_file).read_text().strip() or None
        except OSError as err:
            raise ConfigError(TOKEN_FILE_ENV, token_file, f"cannot read ({err.strerror})") from None
        token_source = (TOKEN_FILE_ENV, token_file)
    tokens = None
    peers_file = env.get(PEER_TOKENS_ENV)
    if peers_file:
        try:
            table = json.loads(Path(peers_file).read_text())
            if not isinstance(table, dict):
                raise ValueError(
                    'must hold a JSON object from identity to token, {"client/0": "...", ...}'
                )
            tokens = TokenTable.from_identity_map(table)
        except (OSError, ValueError, AttributeError) as err:
            raise ConfigError(
                PEER_TOKENS_ENV, peers_file, f"unusable token table ({err})"
            ) from None
    allow = insecure or env.get(INSECURE_ENV, "") in ("1", "true", "yes")
    tls_sources = (
        tuple(zip(config.sources, map(str, (config.ca, config.cert, config.key)), strict=True))
        if config is not None
        else ()
    )
    return Security(
        tls=tls,
        token=token,
        tokens=tokens,
        insecure=allow,
        tls_sources=tls_sources,
        token_source=token_source,
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for launchers that must name
    ports before starting servers; tests should bind port 0 instead)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


RECONNECT_BUDGET_S = 300.0
"""How long a client keeps reconnecting through one outage (from the first
failure until a call goes through) before it gives up with ReconnectError:
long enough for a supervisor to restart a server and for it to restore its
state, short enough that a run whose server is gone for good ends."""
RECONNECT_BASE_S = 0.2
RECONNECT_CAP_S = 10.0
RECONNECT_JITTER = 0.5


@dataclass(frozen=True)
class RetryPolicy:
    """How one process retries its calls on UNAVAILABLE: capped exponential
    backoff with jitter (fedsllm.wire.retry.backoff_delays) seeded by `seed`
    (a client's id, so clients spread their reconnects after a server
    restart; None: a fresh seed), bounded by `budget_s` per outage (None: no
    bound). call_with_retry builds its waits here too, so both agree. `on_retry(call, wait_s)` hears
    every retry before its wait (the client's trace); `sleep` is the wait
    (an Event's wait, to be interruptible; a list's append, in tests)."""

    seed: int | None = 0
    budget_s: float | None = RECONNECT_BUDGET_S
    base_s: float = RECONNECT_BASE_S
    cap_s: float = RECONNECT_CAP_S
    jitter: float = RECONNECT_JITTER
    sleep: Callable[[float], Any] = time.sleep
    clock: Callable[[], float] = time.monotonic
    on_retry: Callable[[str, float], None] | None = None

    def call(
        self,
        name: str,
        fn: Callable[[], T],
        retry_on: Sequence[grpc.StatusCode] = (grpc.StatusCode.UNAVAILABLE,),
    ) -> T:
        """`fn()` until it succeeds; ReconnectError once the budget is spent."""
        return call_with_retry(
            fn,
            attempts=None,
            base_delay_s=self.base_s,
            max_delay_s=self.cap_s,
            jitter=self.jitter,
            seed=self.seed,
            budget_s=self.budget_s,
            retry_on=retry_on,
            sleep=self.sleep,
            clock=self.clock,
            on_retry=self.on_retry,
            name=name,
        )

    def waits(self, name: str) -> RetryWaits:
        """The same schedule, for a caller that runs its own loop (a stream that
        reconnects and re-sends): `wait(err)` once per failure."""
        return RetryWaits(
            name,
            backoff_delays(self.base_s, max(self.cap_s, self.base_s), self.jitter, self.seed),
            budget_s=self.budget_s,
            sleep=self.sleep,
            clock=self.clock,
            on_retry=self.on_retry,
        )


class RetryWaits:
    """The waits of one outage: each failure takes the next delay; the budget
    runs from the first failure. Used by call_with_retry and by streams that
    reconnect themselves."""

    def __init__(
        self,
        name: str,
        delays: Iterator[float],
        *,
        budget_s: float | None,
        sleep: Callable[[float], Any] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_retry: Callable[[str, float], None] | None = None,
    ) -> None:
        self.name = name
        self._delays = delays
        self.budget_s = budget_s
        self._sleep = sleep
        self._clock = clock
        self._on_retry = on_retry
        self._started: float | None = None
        self._warned: set[str] = set()

    def wait(self, err: BaseException) -> None:
        """Sleep before the next try, or raise ReconnectError (from `err`) when
        that wait would end past the budget. The first failure of the outage
        (and a TLS handshake failure, the first time one shows) is logged at
        WARNING, saying what is retried and for how long; each retry at INFO."""
        now = self._clock()
        if self._started is None:
            self._started = now
        delay_s = next(self._delays)
        waited_s = now - self._started
        code, details = status_code(err), status_details(err)
        if self.budget_s is not None and waited_s + delay_s > self.budget_s:
            raise ReconnectError(self.name, waited_s, code, details) from err
        kind = "handshake" if is_handshake_failure(details) else "unreachable"
        if kind not in self._warned:
            self._warned.add(kind)
            left = "" if self.budget_s is None else f" for up to {self.budget_s - waited_s:.0f} s"
            log.warning(
                "%s: %s; retrying with backoff%s until it answers",
                self.name,
                unreachable_reason(code, details),
                left,
            )
        if self._on_retry is not None:
            self._on_retry(self.name, delay_s)
        log.info("%s: %s, retrying in %.2f s", self.name, getattr(code, "name", err), delay_s)
        self._sleep(delay_s)


def is_handshake_failure(details: str) -> bool:
    """Whether a call's status details say the TLS handshake failed (gRPC
    reports it as UNAVAILABLE: "... Tls handshake failed (TSI_PROTOCOL_FAILURE):
    ... CERTIFICATE_VERIFY_FAILED ...")."""
    return "handshake failed" in details.lower()


def unreachable_reason(code: Any, details: str) -> str:
    """One phrase for a call that did not reach its peer: a failed TLS
    handshake (with what to check), or the peer unreachable; gRPC's details
    in parentheses."""
    if is_handshake_failure(details):
        return (
            f"TLS handshake with the peer fails ({details}): the peer's certificate "
            "and this role's must come from the CA given with --tls-ca (FEDSLLM_TLS_CA)"
        )
    return f"peer unreachable ({getattr(code, 'name', code)}: {details or 'no details'})"


def call_with_retry(
    fn: Callable[[], T],
    *,
    attempts: int | None = 5,
    base_delay_s: float = 0.1,
    max_delay_s: float = 5.0,
    jitter: float = 0.0,
    seed: int | None = 0,
    budget_s: float | None = None,
    retry_on: Sequence[grpc.StatusCode] = (grpc.StatusCode.UNAVAILABLE,),
    sleep: Callable[[float], Any] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_retry: Callable[[str, float], None] | None = None,
    name: str = "call",
) -> T:
    """Call `fn` until it succeeds, retrying gRPC errors whose code is in
    `retry_on` after the waits of fedsllm.wire.retry.backoff_delays
    (base_delay_s doubling up to max_delay_s, shortened by up to `jitter` of
    each, reproducible from `seed`). Other errors propagate unchanged.

    Two bounds, either or both: `attempts` (the last failure propagates
    unchanged) and `budget_s`, seconds from the first failure (a wait that
    would end past it raises ReconnectError naming `name` and the last
    status). attempts=None with no budget retries for ever.

    Only idempotent calls belong here (Join, Register, PullGlobal, Status, and
    a push keyed by (client, round, attempt)): `fn` must open a fresh call.
    """
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    waits = RetryPolicy(
        seed=seed,
        budget_s=budget_s,
        base_s=base_delay_s,
        cap_s=max_delay_s,
        jitter=jitter,
        sleep=sleep,
        clock=clock,
        on_retry=on_retry,
    ).waits(name)
    tries = 0
    while True:
        try:
            return fn()
        except grpc.RpcError as err:
            code = status_code(err)
            tries += 1
            if code not in retry_on or (attempts is not None and tries >= attempts):
                raise
            waits.wait(err)


def unary_call(
    method: Callable[..., T],
    request: Any,
    *,
    timeout_s: float,
    attempts: int = 1,
    base_delay_s: float = 0.1,
) -> T:
    """One unary call with a deadline, retried on UNAVAILABLE when attempts > 1;
    its retries are logged under the method's name."""
    return call_with_retry(
        lambda: method(request, timeout=timeout_s),
        attempts=attempts,
        base_delay_s=base_delay_s,
        name=method_name(method),
    )


def method_name(method: Callable[..., Any]) -> str:
    """'Status' for a stub's method (gRPC's multicallables keep their path,
    /package.Service/Method, in `_method`), else the callable's own name: what
    retry messages call the call."""
    path = getattr(method, "_method", None)
    if isinstance(path, bytes):
        path = path.decode("utf-8", "replace")
    if isinstance(path, str) and path:
        return path.rsplit("/", 1)[-1]
    return getattr(method, "__name__", "call")


UNREACHABLE_WARN_S = 5.0
"""How long wait_healthy waits for an unreachable peer before it says so."""


class UnreachableError(TimeoutError):
    """wait_healthy's peer never answered SERVING; `details` is its last answer
    or error (a failed TLS handshake shows there)."""

    def __init__(self, message: str, *, address: str, details: str) -> None:
        self.address = address
        self.details = details
        super().__init__(message)


def wait_healthy(
    address: str,
    timeout_s: float,
    service: str = "",
    poll_s: float = 0.05,
    security: Security | None = None,
    waiting_for: str | None = None,
) -> None:
    """Block until the server at `address` reports `service` SERVING (asked
    over a channel with `security`: a mutual TLS server needs a certificate).

    With `waiting_for` (what the caller waits for, e.g. "the fed server"), a
    failing TLS handshake is logged at WARNING at once, and a peer still
    unreachable after UNREACHABLE_WARN_S, each once; without it (the
    launcher's polls while a role starts) nothing is logged.

    Raises UnreachableError (a TimeoutError) naming the address and the last
    answer or error.
    """
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    started = time.monotonic()
    deadline = started + timeout_s
    last = "no answer"
    warned: set[str] = set()
    with make_channel(address, security) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UnreachableError(
                    f"gRPC server at {address} not SERVING {service!r} after "
                    f"{timeout_s} s (last: {last})",
                    address=address,
                    details=last,
                )
            try:
                reply = stub.Check(
                    health_pb2.HealthCheckRequest(service=service),
                    timeout=max(0.05, min(remaining, 1.0)),
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as err:
                code = status_code(err)
                details = status_details(err) if code is not None else ""
                last = f"{getattr(code, 'name', code)}: {details}" if details else f"{code}"
                if waiting_for is not None:
                    kind = "handshake" if is_handshake_failure(details) else "unreachable"
                    late = time.monotonic() - started >= UNREACHABLE_WARN_S
                    if kind not in warned and (kind == "handshake" or late):
                        warned.add(kind)
                        log.warning(
                            "waiting for %s at %s: %s; retrying for up to %.0f s",
                            waiting_for,
                            address,
                            unreachable_reason(code, details),
                            max(0.0, deadline - time.monotonic()),
                        )
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


class RequestQueue:
    """A request iterator for a sync client-side stream that is fed step by step.

    gRPC drains a request iterator on its own thread; a bidirectional stream
    whose next request depends on the last reply needs an iterator that
    blocks until the caller puts the next message. The client's Train stream
    fed one until it moved to grpc.aio (fedsllm.wire.train_client, which
    spares these hand-overs altogether); the benchmarks' sync baselines
    (benchmarks/wire_throughput.py's raw echo) still do, as the figures
    below were measured. `close()`
    ends the stream cleanly. With `maxsize` > 0, `put` blocks while that
    many items wait (backpressure; a `put_all` batch is one item).

    `put_all` hands over a step's messages as one batch: one queue item, one
    wake-up of gRPC's sending thread, which then takes the messages one by
    one without going back to the queue. Putting them one at a time costs a
    lock, a condition notify and a thread switch each, on the step's
    critical path (0.5-0.8% of the 1.57 MB echo's step, measured by
    alternating the two in one stream; issue 13).

    `wait_sent` is where the caller waits before it waits for the reply.
    gRPC-Python wakes every thread waiting on a call (its one condition) at
    each event of the call, so a caller blocked on the reply iterator while
    its step goes out is woken, takes the GIL from the threads doing the
    sending, and sleeps again, once for every message sent: about 450 times
    per 64 MiB step in 256 KiB messages. Waiting here first, on a condition
    only the step's end wakes, spares those wake-ups. Measured by
    alternating two waits step by step in one stream, each parity once
    (issue 13): waiting until gRPC had taken the step's last message made
    the 1.57 MB upload 4.5% and 5.7% faster, the 64 MiB one 5.8% and 7.4%,
    the 1.57 MB echo 1.2% and 2.0%; waiting until it is sent (gRPC's
    sending thread comes back for the next message only once the last is
    sent), which spares the last message's wake-up too, gained another 0.6%
    and 2.0% on the upload, 0.0% and 1.2% on the echo, and 3.4% and 4.4% on
    a 1 KiB step. Waiting until sent against not waiting at all: the 1.57 MB
    upload 3.1% and 5.2% faster, a 64 KiB upload 0.6% and 0.7%, a 1 KiB step
    1.1% and 3.7% (each pair of figures from its own two streams).
    """

    _END = object()
    _WAIT_SLICE_S = 0.1
    """The caller waits in slices of this length, as gRPC's own waits do
    (grpc/_common.py, MAXIMUM_WAIT_TIMEOUT)."""

    def __init__(self, maxsize: int = 0) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self._closed = threading.Event()
        self._batch: collections.deque[Any] = collections.deque()
        """The rest of the batch being sent, emptied as it goes (a sent
        message, and the tensor it views, is not kept alive by the queue);
        only gRPC's sending thread, the one consumer, touches it."""
        self._handed = threading.Condition()
        """Guards the two counts and the call's end; notified when every item
        put is sent, and when the call or the queue ends."""
        self._items_put = 0
        self._items_sent = 0
        """Items (a batch is one) put, and sent whole."""
        self._sending = False
        """The consumer's last item is out with its last message: the next
        call of __next__ (gRPC's sending thread back for more) means it is
        sent. Only the consumer touches it."""
        self._call_ended = False

    def put(self, msg: Any, timeout_s: float | None = None) -> None:
        self._enqueue(msg, timeout_s)

    def put_all(self, msgs: Iterable[Any]) -> None:
        """Put every message of `msgs`, in order, as one batch. The iterable is
        drained here, in the caller's thread, so an error in making the
        messages is raised to the caller and not inside gRPC's thread. With
        `maxsize`, it blocks (without a timeout) while the queue is full."""
        if self._closed.is_set():
            raise ValueError("put on a closed RequestQueue")
        batch = collections.deque(msgs)
        if batch:
            self._enqueue(_Batch(batch), None)

    def _enqueue(self, item: Any, timeout_s: float | None) -> None:
        if self._closed.is_set():
            raise ValueError("put on a closed RequestQueue")
        with self._handed:  # counted first: a waiter must not see the item as sent
            self._items_put += 1
        try:
            self._queue.put(item, timeout=timeout_s)
        except BaseException:  # queue.Full, or an interrupt: the item is not queued
            with self._handed:
                self._items_put -= 1
                self._handed.notify_all()
            raise

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._queue.put(self._END)
            self._notify()

    def watch(self, call: grpc.Future) -> None:
        """Tie the queue to `call`, the stream it feeds: once the call has
        ended, `wait_sent` returns (gRPC stops sending on a call that
        failed, so its last messages would never be sent), and gRPC's
        sending thread, blocked here for the next message, gets the end of
        the iterator and quits. Without that it would wait for ever on a
        call that failed before anyone closed its queue (a refused hello)."""
        call.add_done_callback(self._on_call_done)

    def _on_call_done(self, _call: grpc.Future) -> None:
        with self._handed:
            self._call_ended = True
            self._handed.notify_all()
        # Not closed: a later put still queues, as before, for nobody. A full
        # queue has items for the sender to take, so it is not blocked here.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(self._END)

    def wait_sent(self) -> None:
        """Block until gRPC has sent every message put so far, the queue is
        closed, or the watched call has ended. See the class docstring for
        why."""
        with self._handed:
            while not (
                self._items_sent >= self._items_put or self._call_ended or self._closed.is_set()
            ):
                self._handed.wait(self._WAIT_SLICE_S)

    def _notify(self) -> None:
        with self._handed:
            self._handed.notify_all()

    def _sent(self) -> None:
        """An item is sent whole (a single message, or a batch's last)."""
        with self._handed:
            self._items_sent += 1
            if self._items_sent >= self._items_put:
                self._handed.notify_all()

    def __iter__(self) -> RequestQueue:
        return self

    def __next__(self) -> Any:
        if self._batch:
            return self._batch.popleft()
        if self._sending:
            # gRPC's sending thread asks for the next message only once the
            # last one it took is sent (grpc/_channel.py, the request consumer).
            self._sending = False
            self._sent()
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        self._sending = True
        if type(item) is _Batch:
            self._batch = item.msgs
            return self._batch.popleft()  # never empty: put_all puts none such
        return item


@dataclass(frozen=True, slots=True)
class _Batch:
    """Messages put_all queued together."""

    msgs: collections.deque[Any]
