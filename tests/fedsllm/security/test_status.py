"""The one domain-error -> status-code mapping (fedsllm.wire.status)."""

from __future__ import annotations

import grpc
import pytest

from fedsllm.errors import AllocationError, ConfigError, LinkError, StateError, WireError
from fedsllm.security.identity import AuthenticationError, PermissionDeniedError
from fedsllm.wire.status import abort_for, status_for


class _Aborted(Exception):
    pass


class _Context:
    """Records what abort was called with (grpc's abort raises; so does this)."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise _Aborted


class _SubState(StateError):
    pass


@pytest.mark.parametrize(
    "err, code",
    [
        (AuthenticationError("no token"), grpc.StatusCode.UNAUTHENTICATED),
        (PermissionDeniedError("client/1 may not"), grpc.StatusCode.PERMISSION_DENIED),
        (WireError("activations.shape[2]", "63, expected 64"), grpc.StatusCode.INVALID_ARGUMENT),
        (ConfigError("round", -1, "must be >= 0"), grpc.StatusCode.INVALID_ARGUMENT),
        (StateError("stale round 2"), grpc.StatusCode.FAILED_PRECONDITION),
        (_SubState("subclass"), grpc.StatusCode.FAILED_PRECONDITION),
        (AllocationError("infeasible"), grpc.StatusCode.FAILED_PRECONDITION),
        (TimeoutError("round did not close"), grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_domain_errors_map_to_their_code(err: Exception, code: grpc.StatusCode) -> None:
    assert status_for(err) == code
    context = _Context()
    with pytest.raises(_Aborted):
        abort_for(context, err)  # type: ignore[arg-type]
    assert context.aborted == (code, str(err))


@pytest.mark.parametrize("err", [KeyError("bug"), RuntimeError("bug"), LinkError("no tc")])
def test_unlisted_errors_propagate_unchanged(err: Exception) -> None:
    assert status_for(err) is None
    context = _Context()
    with pytest.raises(type(err)) as info:
        abort_for(context, err)  # type: ignore[arg-type]
    assert info.value is err and context.aborted is None


def test_superset_of_the_per_service_tables() -> None:
    # The tables fed_server/service.py, fed_server/controller_service.py and
    # main_server/service.py kept before phase 2 (copied here, not imported:
    # those modules are being rewritten to use this mapping).
    old = {
        WireError: grpc.StatusCode.INVALID_ARGUMENT,
        StateError: grpc.StatusCode.FAILED_PRECONDITION,
        TimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
        AllocationError: grpc.StatusCode.FAILED_PRECONDITION,
    }
    for cls, code in old.items():
        assert status_for(cls.__new__(cls)) == code
