"""The project's few typed errors; each carries enough context to act on."""

from __future__ import annotations

from typing import Any, Final


class _NoValue:
    """The value of a setting that was not given at all."""

    def __repr__(self) -> str:
        return "NO_VALUE"


NO_VALUE: Final = _NoValue()
"""A ConfigError's value when nothing was given or the value says nothing
(a missing flag, a file that is not there): the message then ends with the
reason, not with "got None"."""


class FedsLLMError(Exception):
    """Base of every error the project raises on purpose."""


class ConfigError(FedsLLMError):
    """A scenario field is missing, unknown or out of range.

    `path` is the dotted field name (``clients.profiles[2].flops``) so the
    message tells the user exactly what to edit; `value` is what was given
    there, or NO_VALUE when nothing was.
    """

    def __init__(self, path: str, value: Any, reason: str) -> None:
        self.path = path
        self.value = value
        self.reason = reason
        got = "" if value is NO_VALUE else f", got {value!r}"
        super().__init__(f"{path}: {reason}{got}")


class WireError(FedsLLMError):
    """A frame, tensor or adapter received over the wire is malformed.

    Servicers map it to INVALID_ARGUMENT; `field` names the offending part.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class StateError(FedsLLMError):
    """A well-formed request that does not fit the current state (stale round,
    unknown client). Servicers map it to FAILED_PRECONDITION."""


class ResourceLimitError(FedsLLMError):
    """A peer exceeded a server limit (message size, streams per peer, rate of
    Join/Register, bytes of a transfer). Servicers map it to
    RESOURCE_EXHAUSTED; nothing was changed. `limit` names the limit."""

    def __init__(self, limit: str, reason: str) -> None:
        self.limit = limit
        self.reason = reason
        super().__init__(f"{limit}: {reason}")


class AllocationError(FedsLLMError):
    """The allocation problem is infeasible, degenerate, or a solver did not
    reach an optimal status; `status` carries the solver's own word for it."""

    def __init__(self, message: str, status: str = "infeasible") -> None:
        self.status = status
        super().__init__(message)


class LinkError(FedsLLMError):
    """Link emulation cannot be set up as asked (no privileges, no netem)."""


class ReconnectError(ConnectionError):
    """A peer stayed unreachable for the whole reconnect budget."""

    def __init__(self, call: str, waited_s: float, code: Any, details: str) -> None:
        self.call = call
        self.waited_s = waited_s
        super().__init__(
            f"{call}: still {getattr(code, 'name', code)} after {waited_s:.0f} s of "
            f"reconnecting (last: {details or 'no details'}); giving up"
        )
