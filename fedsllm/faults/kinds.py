"""Fault kinds: one class and one registration each (STYLE.md rule 21).

A fault is what `--faults` or the scenario's ``[[faults]]`` asks for: a kind,
a target role, a trigger (a time or a round) and the kind's options. Its
kind turns it into `Action`s at offsets from the moment it triggers; the
executor (fedsllm/faults/executor.py) performs them. A new kind is one class
with `name`, `options` and `actions`, decorated with @register_fault_kind;
nothing else changes. Parsing is in fedsllm/faults/spec.py.
"""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

ROLES = ("client", "main_server", "fed_server")


@dataclass(frozen=True)
class Target:
    role: str
    """"client", "main_server" or "fed_server"."""
    client_id: int | None = None
    """Which client (role "client" only)."""

    @property
    def name(self) -> str:
        """The launcher's name for the process: client_1, main_server, fed_server."""
        return f"client_{self.client_id}" if self.role == "client" else self.role


@dataclass(frozen=True)
class Trigger:
    """Exactly one of the two is set."""

    at_s: float | None = None
    """Seconds since the run started."""
    round: int | None = None
    """When this round is the current one (the fed server's open round)."""

    def text(self) -> str:
        return f"round={self.round}" if self.round is not None else f"t={_fmt_s(self.at_s)}"


@dataclass(frozen=True)
class Action:
    """One thing to do to a target, `offset_s` after its fault triggered."""

    offset_s: float
    op: str
    """"signal", "restart" or "outage" (the executor's table of operations)."""
    target: Target
    signum: int | None = None
    """For "signal"."""
    on: bool | None = None
    """For "outage": True cuts the target's links, False restores them."""

    def label(self) -> str:
        """What is done, without target or time: "signal SIGKILL", "restart", "link down"."""
        return {
            "signal": lambda: (
                "signal " + (signal.Signals(self.signum).name if self.signum else "?")
            ),
            "restart": lambda: "restart",
            "outage": lambda: "link down" if self.on else "link up",
        }[self.op]()

    def text(self) -> str:
        detail = self.label().removeprefix("signal ")
        return f"{detail} {self.target.name} at +{_fmt_s(self.offset_s)}"


@dataclass(frozen=True)
class Fault:
    kind: str
    target: Target
    trigger: Trigger
    options: Mapping[str, Any] = field(default_factory=dict)
    """Parsed option values: durations in seconds."""

    def text(self) -> str:
        """The canonical `--faults` token of this fault (parses back to an equal Fault)."""
        opts = "".join(
            f";{k}={_fmt_s(v) if isinstance(v, float) else v}"
            for k, v in sorted(self.options.items())
        )
        return f"{self.kind}:{self.target.name}@{self.trigger.text()}{opts}"

    def actions(self) -> list[Action]:
        return FAULT_KINDS.get(self.kind).actions(self)


def _fmt_s(value: float | None) -> str:
    short = f"{value:g}"
    return f"{short if float(short) == value else repr(value)}s"


# ---------------------------------------------------------------- option types
@dataclass(frozen=True)
class Option:
    parse: Callable[[str], Any]
    """Text -> value; raises ValueError with the reason."""
    required: bool = False
    default: Any = None
    help: str = ""


class FaultKind(ABC):
    name: ClassVar[str]
    help: ClassVar[str]
    options: ClassVar[Mapping[str, Option]] = {}

    @classmethod
    @abstractmethod
    def actions(cls, fault: Fault) -> list[Action]:
        """The actions of `fault`, in order, at offsets from its trigger."""


class FaultRegistry:
    """Kind name -> FaultKind class."""

    def __init__(self) -> None:
        self._kinds: dict[str, type[FaultKind]] = {}

    def register(self, cls: type[FaultKind]) -> type[FaultKind]:
        if cls.name in self._kinds:
            raise ValueError(f"fault kind {cls.name!r} is registered twice")
        self._kinds[cls.name] = cls
        return cls

    def get(self, name: str) -> type[FaultKind]:
        return self._kinds[name]

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._kinds))


FAULT_KINDS = FaultRegistry()
"""The registry every parser and executor reads; filled by the decorations below."""


def register_fault_kind(cls: type[FaultKind]) -> type[FaultKind]:
    return FAULT_KINDS.register(cls)


def parse_duration_s(text: str) -> float:
    """ "2s", "500ms", "1.5m" or a bare number of seconds -> seconds (>= 0)."""
    raw = text.strip()
    scale = 1.0
    for suffix, factor in (("ms", 1e-3), ("s", 1.0), ("m", 60.0)):
        if raw.endswith(suffix):
            raw, scale = raw[: -len(suffix)], factor
            break
    try:
        value = float(raw) * scale
    except ValueError:
        raise ValueError(f"not a duration (expected e.g. 2s, 500ms, 1.5m): {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"a duration must be finite and >= 0: {text!r}")
    return value


# ---------------------------------------------------------------- the kinds
@register_fault_kind
class Kill(FaultKind):
    name = "kill"
    help = "SIGKILL the target; with restart=D, start it again D later"
    options = {"restart": Option(parse_duration_s, help="delay before the restart (none: none)")}

    @classmethod
    def actions(cls, fault: Fault) -> list[Action]:
        out = [Action(0.0, "signal", fault.target, signum=int(signal.SIGKILL))]
        if fault.options.get("restart") is not None:
            out.append(Action(float(fault.options["restart"]), "restart", fault.target))
        return out


@register_fault_kind
class Stop(FaultKind):
    name = "stop"
    help = "SIGSTOP the target, then SIGCONT it after for=D"
    options = {"for": Option(parse_duration_s, required=True, help="how long it stays stopped")}

    @classmethod
    def actions(cls, fault: Fault) -> list[Action]:
        return [
            Action(0.0, "signal", fault.target, signum=int(signal.SIGSTOP)),
            Action(float(fault.options["for"]), "signal", fault.target, signum=int(signal.SIGCONT)),
        ]


@register_fault_kind
class Restart(FaultKind):
    name = "restart"
    help = "SIGTERM the target (a clean stop), then start it again after=D later"
    options = {"after": Option(parse_duration_s, default=1.0, help="delay before the start")}

    @classmethod
    def actions(cls, fault: Fault) -> list[Action]:
        return [
            Action(0.0, "signal", fault.target, signum=int(signal.SIGTERM)),
            Action(float(fault.options["after"]), "restart", fault.target),
        ]


@register_fault_kind
class Outage(FaultKind):
    name = "outage"
    help = "cut every link of the target for for=D (the processes keep running)"
    options = {"for": Option(parse_duration_s, required=True, help="how long the links are down")}

    @classmethod
    def actions(cls, fault: Fault) -> list[Action]:
        return [
            Action(0.0, "outage", fault.target, on=True),
            Action(float(fault.options["for"]), "outage", fault.target, on=False),
        ]
