from __future__ import annotations

import signal
import tomllib

import pytest

from fedsllm.errors import ConfigError
from fedsllm.faults.kinds import FAULT_KINDS, Action, FaultKind, Target, Trigger, parse_duration_s
from fedsllm.faults.spec import describe_kinds, faults_from_toml, parse_fault, parse_faults

EXAMPLE = (
    "kill:client_1@round=3;restart=2s, stop:main_server@t=20s;for=150s, "
    "outage:client_0@round=2;for=10s, restart:fed_server@t=1.5m"
)


def test_the_example_spec() -> None:
    kill, stop, outage, restart = parse_faults(EXAMPLE, num_clients=3)
    assert (kill.kind, kill.target, kill.trigger, dict(kill.options)) == (
        "kill",
        Target("client", 1),
        Trigger(round=3),
        {"restart": 2.0},
    )
    assert (stop.target.name, stop.trigger.at_s, stop.options["for"]) == ("main_server", 20.0, 150)
    assert (outage.target.name, outage.trigger.round, outage.options["for"]) == ("client_0", 2, 10)
    assert (restart.target.name, restart.trigger.at_s, restart.options["after"]) == (
        "fed_server",
        90.0,
        1.0,
    )


def test_canonical_text_parses_back() -> None:
    faults = parse_faults(EXAMPLE + ",kill:client_2@t=0.25s")
    again = parse_faults(",".join(f.text() for f in faults))
    assert again == faults
    assert faults[0].text() == "kill:client_1@round=3;restart=2s"


def test_empty_spec_is_no_fault() -> None:
    assert parse_faults("") == [] and parse_faults(" , ") == []


@pytest.mark.parametrize(
    ("token", "needle"),
    [
        ("explode:client_1@round=3", "unknown fault kind"),
        ("kill:client_9@round=3", "client 9 does not exist"),
        ("kill:server@round=3", "target must be"),
        ("kill:client_1@when=3", "trigger must be"),
        ("kill:client_1@round=-1", "round must be an integer"),
        ("kill:client_1@round=x", "round must be an integer"),
        ("kill:client_1@t=soon", "not a duration"),
        ("kill:client_1@t=-2s", "finite and >= 0"),
        ("stop:client_1@t=2s", "stop needs for=<value>"),
        ("stop:client_1@t=2s;for=1s;for=2s", "given twice"),
        ("kill:client_1@t=2s;restart", "not name=value"),
        ("kill:client_1@t=2s;after=1s", r"after: unknown option for kill \(options: restart\)"),
        ("outage:client_1@t=2s;for=inf", "finite"),
        ("kill client_1", "expected KIND:TARGET@"),
    ],
)
def test_bad_tokens_are_refused_naming_the_token(token: str, needle: str) -> None:
    spec = f"stop:main_server@t=1s;for=1s, {token}"
    with pytest.raises(ConfigError, match=needle) as info:
        parse_faults(spec, num_clients=3)
    assert info.value.path == "--faults"
    assert info.value.value == token.strip()


@pytest.mark.parametrize(
    ("text", "seconds"), [("2s", 2.0), ("500ms", 0.5), ("1.5m", 90.0), ("3", 3.0), ("0", 0.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


def test_toml_list_equals_the_text() -> None:
    doc = tomllib.loads(
        """
[[faults]]
kind = "kill"
target = "client_1"
round = 3
restart = "2s"

[[faults]]
kind = "stop"
target = "main_server"
at = 20
for = 150

[[faults]]
kind = "outage"
target = "client_0"
round = 2
for = "10s"

[[faults]]
kind = "restart"
target = "fed_server"
at = "1.5m"
"""
    )
    assert faults_from_toml(doc["faults"], num_clients=3) == parse_faults(EXAMPLE)


@pytest.mark.parametrize(
    ("entry", "path", "needle"),
    [
        ({"target": "client_0", "round": 1}, "faults[0].kind", "required"),
        ({"kind": "nope", "target": "client_0", "round": 1}, "faults[0].kind", "unknown"),
        ({"kind": "kill", "target": "x", "round": 1}, "faults[0].target", "target must be"),
        ({"kind": "kill", "target": "client_0"}, "faults[0]", "exactly one of"),
        ({"kind": "kill", "target": "client_0", "round": 1, "at": 2}, "faults[0]", "exactly one"),
        ({"kind": "kill", "target": "client_0", "round": 1.5}, "faults[0].round", "integer"),
        ({"kind": "kill", "target": "client_0", "round": True}, "faults[0].round", "integer"),
        ({"kind": "stop", "target": "client_0", "round": 1}, "faults[0].for", "stop needs for"),
        (
            {"kind": "stop", "target": "client_0", "round": 1, "for": "x"},
            "faults[0].for",
            "not a duration",
        ),
        ({"kind": "kill", "target": "client_0", "at": 1, "bogus": 1}, "faults[0].bogus", "unknown"),
    ],
)
def test_bad_toml_entries_name_the_key(entry: dict, path: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        faults_from_toml([entry])
    assert info.value.path == path


def test_toml_must_be_a_list_of_tables() -> None:
    with pytest.raises(ConfigError, match="list of tables"):
        faults_from_toml("kill")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="expected a table"):
        faults_from_toml([3])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("kill:client_0@t=1s", [(0.0, "signal", signal.SIGKILL)]),
        (
            "kill:client_0@t=1s;restart=2s",
            [(0.0, "signal", signal.SIGKILL), (2.0, "restart", None)],
        ),
        (
            "stop:client_0@t=1s;for=5s",
            [(0.0, "signal", signal.SIGSTOP), (5.0, "signal", signal.SIGCONT)],
        ),
        (
            "restart:client_0@t=1s;after=3s",
            [(0.0, "signal", signal.SIGTERM), (3.0, "restart", None)],
        ),
        ("outage:client_0@t=1s;for=4s", [(0.0, "outage", None), (4.0, "outage", None)]),
    ],
)
def test_each_kind_gives_its_actions(token: str, expected: list) -> None:
    actions = parse_fault(token).actions()
    assert [(a.offset_s, a.op, a.signum) for a in actions] == expected
    assert all(a.target == Target("client", 0) for a in actions)


def test_registry_holds_one_class_per_kind_and_refuses_a_second() -> None:
    assert list(FAULT_KINDS) == ["kill", "outage", "restart", "stop"]
    assert len(describe_kinds()) == 4 and any("for=D (required)" in d for d in describe_kinds())

    class Again(FaultKind):
        name = "kill"
        help = ""

        @classmethod
        def actions(cls, fault):  # pragma: no cover - never called
            return []

    with pytest.raises(ValueError, match="registered twice"):
        FAULT_KINDS.register(Again)


def test_a_new_kind_is_one_class_and_one_registration() -> None:
    from fedsllm.faults.kinds import FaultRegistry

    registry = FaultRegistry()

    @registry.register
    class Hup(FaultKind):
        name = "hup"
        help = "SIGHUP"

        @classmethod
        def actions(cls, fault):
            return [Action(0.0, "signal", fault.target, signum=int(signal.SIGHUP))]

    assert "hup" in registry and registry.get("hup") is Hup
