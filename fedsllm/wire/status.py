"""The one mapping from the project's domain errors to gRPC status codes.

Every servicer ends a refused call with `abort_for(context, err)`; no service
keeps a table of its own. An error of no listed type is a bug: it propagates,
and gRPC reports it as UNKNOWN. The most specific listed class wins (the
error's MRO is walked), so a subclass may be given a code of its own.
What raises these errors is left to the roles and to fedsllm.security.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import NoReturn

import grpc

from fedsllm.errors import (
    AllocationError,
    ConfigError,
    ResourceLimitError,
    StateError,
    WireError,
)
from fedsllm.security.identity import AuthenticationError, PermissionDeniedError
from fedsllm.state.errors import (
    ConflictingUpdateError,
    DuplicateUpdateError,
    LateUpdateError,
    NotJoinedError,
    RoundClosedError,
    RoundNotOpenError,
    RunFinishedError,
    UpdateRefused,
)
from fedsllm.state.store import StorageError

log = logging.getLogger(__name__)

STATUS_OF: Mapping[type[BaseException], grpc.StatusCode] = MappingProxyType(
    {
        # Who is calling (fedsllm.security.identity): no or unknown credentials,
        # or a known caller acting beyond its identity. Nothing was changed.
        AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
        PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
        # A malformed frame, tensor or adapter, or a request field out of range.
        WireError: grpc.StatusCode.INVALID_ARGUMENT,
        ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
        # Well-formed, but not now: stale round, unknown client, wrong scenario
        # hash; an allocation request that would leave the round unsolvable
        # (refused, the previous allocation stays in force).
        StateError: grpc.StatusCode.FAILED_PRECONDITION,
        AllocationError: grpc.StatusCode.FAILED_PRECONDITION,
        # Refused pushes (fedsllm.state.errors), one meaning per code, so a
        # client knows what to do without reading the message:
        # - the server does not know this client (it never joined, or the
        #   server lost it): join again, then push again;
        NotJoinedError: grpc.StatusCode.FAILED_PRECONDITION,
        # - the round went on (or will) without this update: catch up with
        #   the latest global adapter; a push for a round not yet open, or
        #   after the last one, is out of range the same way;
        LateUpdateError: grpc.StatusCode.OUT_OF_RANGE,
        RoundClosedError: grpc.StatusCode.OUT_OF_RANGE,
        RoundNotOpenError: grpc.StatusCode.OUT_OF_RANGE,
        RunFinishedError: grpc.StatusCode.OUT_OF_RANGE,
        # - this round already counts an update of this client (another
        #   attempt), or this key arrived with other bytes: nothing to redo.
        DuplicateUpdateError: grpc.StatusCode.ALREADY_EXISTS,
        ConflictingUpdateError: grpc.StatusCode.ALREADY_EXISTS,
        # A peer went past a limit (size, streams per peer, Join/Register rate).
        ResourceLimitError: grpc.StatusCode.RESOURCE_EXHAUSTED,
        # The server waited for peers (e.g. a round to close) past its limit.
        TimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
        # The server's own store could not commit (a full disk): nothing of
        # the call was kept, the state is as before it. Not the peer's fault
        # and not final: retry the same request (the same push key) later.
        StorageError: grpc.StatusCode.UNAVAILABLE,
    }
)
"""Domain error -> status code, for every server of the project."""

REFUSED: tuple[type[BaseException], ...] = tuple(STATUS_OF)
"""What a handler refuses (`except REFUSED as err: abort_for(context, err)`):
every type STATUS_OF maps; anything else is a bug (UNKNOWN). One tuple, so
a newly mapped error (StorageError) reaches every service's callers with its
status."""


REFUSAL_KEY = "fedsllm-refusal"
"""Trailing-metadata key carrying a refused push's reason word
(fedsllm.state.errors.UPDATE_REFUSALS), so a client tells "late" from
"round_closed" without parsing the message."""


def status_code(err: BaseException) -> grpc.StatusCode | None:
    """The status a failed call ended with: the error of a sync call (a
    grpc.Call) or of a grpc.aio one (AioRpcError, which is not a grpc.Call);
    None for any other error (one raised before a call existed)."""
    if isinstance(err, (grpc.Call, grpc.aio.AioRpcError)):
        return err.code()
    return None


def status_details(err: BaseException) -> str:
    """The details a failed call ended with (as status_code), else the error's text."""
    if isinstance(err, (grpc.Call, grpc.aio.AioRpcError)):
        return err.details() or ""
    return str(err)


def refusal_of(err: grpc.RpcError) -> str | None:
    """The reason word a refused call carried in its trailing metadata, or None."""
    trailing = getattr(err, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == REFUSAL_KEY:
            return value if isinstance(value, str) else value.decode()
    return None


def status_for(err: BaseException) -> grpc.StatusCode | None:
    """The code STATUS_OF gives `err` (its most specific listed class), or None."""
    for cls in type(err).__mro__:
        code = STATUS_OF.get(cls)
        if code is not None:
            return code
    return None


def abort_for(
    context: grpc.ServicerContext, err: Exception, logger: logging.Logger | None = None
) -> NoReturn:
    """End the call with the status STATUS_OF assigns to `err` and its message,
    logging the refusal at WARNING (on `logger`, default this module's); an
    error of no listed type is re-raised unchanged (a bug: UNKNOWN)."""
    code = status_for(err)
    if code is None:
        raise err
    (logger or log).warning("refused: %s: %s", code.name, err)
    if isinstance(err, UpdateRefused):
        context.set_trailing_metadata(((REFUSAL_KEY, err.reason),))
    context.abort(code, str(err))
    raise err  # unreachable: context.abort raises
