"""Parse fault specs: the `--faults SPEC` text and the scenario's ``[[faults]]`` list.

Grammar of the text (whitespace around tokens is ignored)::

    SPEC     := FAULT ( "," FAULT )*
    FAULT    := KIND ":" TARGET "@" TRIGGER ( ";" NAME "=" VALUE )*
    TARGET   := "client_" INT | "main_server" | "fed_server"
    TRIGGER  := "round=" INT | "t=" DURATION
    DURATION := NUMBER [ "ms" | "s" | "m" ]      (a bare number is seconds)

e.g. ``kill:client_1@round=3;restart=2s, stop:main_server@t=20s;for=150s,
outage:client_0@round=2;for=10s``. KIND and its options come from the
registry in fedsllm/faults/kinds.py (`fedsllm run --faults help` may list
them with `describe_kinds`).

The same faults in a scenario (TOML), one table each; `at` is the time
trigger, `round` the round trigger, other keys are the kind's options::

    [[faults]]
    kind = "kill"
    target = "client_1"
    round = 3
    restart = "2s"       # or a number of seconds

Anything malformed raises ConfigError whose path is ``--faults`` (text) or
``faults[i].key`` (TOML) and whose value is the offending token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from fedsllm.errors import ConfigError
from fedsllm.faults.kinds import FAULT_KINDS, Fault, Target, Trigger, parse_duration_s

_FAULT_RE = re.compile(r"^(?P<kind>[a-z_]+):(?P<target>[a-z0-9_]+)@(?P<trigger>[^;]+)(?P<opts>.*)$")
_CLIENT_RE = re.compile(r"^client_(\d+)$")


def _target(text: str, num_clients: int | None) -> Target:
    """Raises ValueError with the reason."""
    match = _CLIENT_RE.match(text)
    if match:
        client_id = int(match.group(1))
        if num_clients is not None and client_id >= num_clients:
            raise ValueError(f"client {client_id} does not exist (clients 0..{num_clients - 1})")
        return Target("client", client_id)
    if text in ("main_server", "fed_server"):
        return Target(text)
    raise ValueError("target must be client_<k>, main_server or fed_server")


def _trigger(name: str, value: str) -> Trigger:
    if name == "round":
        if not re.fullmatch(r"\d+", value.strip()):
            raise ValueError("round must be an integer >= 0")
        return Trigger(round=int(value))
    if name in ("t", "at"):
        return Trigger(at_s=parse_duration_s(value))
    raise ValueError("trigger must be round=<r> or t=<duration>")


def _options(kind: str, given: Mapping[str, str]) -> dict[str, Any]:
    """Raises KeyError(name) / ValueError; returns every option, defaults filled."""
    spec = FAULT_KINDS.get(kind).options
    unknown = sorted(set(given) - set(spec))
    if unknown:
        allowed = ", ".join(sorted(spec)) or "none"
        raise KeyError(unknown[0], f"unknown option for {kind} (options: {allowed})")
    out: dict[str, Any] = {}
    for name, option in spec.items():
        if name in given:
            try:
                out[name] = option.parse(given[name])
            except ValueError as err:
                raise KeyError(name, str(err)) from None
        elif option.required:
            raise KeyError(name, f"{kind} needs {name}=<value> ({option.help})")
        elif option.default is not None:
            out[name] = option.default
    return out


def _kind(name: str) -> str:
    if name not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind (kinds: {', '.join(FAULT_KINDS)})")
    return name


def parse_fault(token: str, num_clients: int | None = None, path: str = "--faults") -> Fault:
    """One FAULT of the grammar; ConfigError(path, token, reason) when malformed."""
    text = token.strip()
    match = _FAULT_RE.match(text.replace(" ", ""))
    if match is None:
        raise ConfigError(path, text, "expected KIND:TARGET@round=R|t=D[;name=value...]")
    try:
        kind = _kind(match.group("kind"))
        target = _target(match.group("target"), num_clients)
        trig_name, _, trig_value = match.group("trigger").partition("=")
        trigger = _trigger(trig_name, trig_value)
        given: dict[str, str] = {}
        for item in filter(None, match.group("opts").split(";")):
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise ValueError(f"option {item!r} is not name=value")
            if name in given:
                raise ValueError(f"option {name!r} given twice")
            given[name] = value
        options = _options(kind, given)
    except KeyError as err:
        raise ConfigError(path, text, f"{err.args[0]}: {err.args[1]}") from None
    except ValueError as err:
        raise ConfigError(path, text, str(err)) from None
    return Fault(kind, target, trigger, options)


def parse_faults(spec: str, num_clients: int | None = None) -> list[Fault]:
    """Every fault of a `--faults` SPEC, in order; an empty spec is no fault."""
    return [parse_fault(token, num_clients) for token in spec.split(",") if token.strip()]


def faults_from_toml(
    entries: Sequence[Mapping[str, Any]], num_clients: int | None = None, path: str = "faults"
) -> list[Fault]:
    """The scenario's ``[[faults]]`` tables; ConfigError naming ``faults[i].key``."""
    if not isinstance(entries, Sequence) or isinstance(entries, str):
        raise ConfigError(path, entries, "expected a list of tables ([[faults]])")
    faults = []
    for i, entry in enumerate(entries):
        where = f"{path}[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(where, entry, "expected a table")
        for key in ("kind", "target"):
            if not isinstance(entry.get(key), str):
                raise ConfigError(f"{where}.{key}", entry.get(key), "required, a string")
        try:
            kind = _kind(entry["kind"])
        except ValueError as err:
            raise ConfigError(f"{where}.kind", entry["kind"], str(err)) from None
        try:
            target = _target(entry["target"], num_clients)
        except ValueError as err:
            raise ConfigError(f"{where}.target", entry["target"], str(err)) from None
        triggers = [k for k in ("round", "at") if k in entry]
        if len(triggers) != 1:
            raise ConfigError(where, dict(entry), "give exactly one of round = R or at = D")
        key = triggers[0]
        value = entry[key]
        if isinstance(value, bool) or (key == "round" and not isinstance(value, int)):
            raise ConfigError(f"{where}.{key}", value, "round must be an integer >= 0")
        try:
            trigger = _trigger(key, str(value))
        except ValueError as err:
            raise ConfigError(f"{where}.{key}", value, str(err)) from None
        given = {k: str(v) for k, v in entry.items() if k not in ("kind", "target", "round", "at")}
        try:
            options = _options(kind, given)
        except KeyError as err:
            name = err.args[0]
            raise ConfigError(f"{where}.{name}", entry.get(name), err.args[1]) from None
        faults.append(Fault(kind, target, trigger, options))
    return faults


def describe_kinds() -> list[str]:
    """One line per registered kind and its options, for --help texts."""
    lines = []
    for name in FAULT_KINDS:
        kind = FAULT_KINDS.get(name)
        opts = ", ".join(
            f"{o}=D{' (required)' if spec.required else ''}" for o, spec in kind.options.items()
        )
        lines.append(f"{name}: {kind.help}" + (f" [{opts}]" if opts else ""))
    return lines
