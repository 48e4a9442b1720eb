"""Fault injection for tests and demos: kinds (registry), spec parsing, the executor.

`parse_faults("kill:client_1@round=3;restart=2s")` or `faults_from_toml(...)`
gives `Fault`s; a launcher feeds them to `FaultExecutor` with `FaultOps`
over the processes it owns. See kinds.py, spec.py and executor.py.
"""

from fedsllm.faults.executor import FaultEvent, FaultExecutor, FaultOps
from fedsllm.faults.kinds import (
    FAULT_KINDS,
    Action,
    Fault,
    FaultKind,
    Option,
    Target,
    Trigger,
    parse_duration_s,
    register_fault_kind,
)
from fedsllm.faults.spec import describe_kinds, faults_from_toml, parse_fault, parse_faults

__all__ = [
    "FAULT_KINDS",
    "Action",
    "Fault",
    "FaultEvent",
    "FaultExecutor",
    "FaultKind",
    "FaultOps",
    "Option",
    "Target",
    "Trigger",
    "describe_kinds",
    "faults_from_toml",
    "parse_duration_s",
    "parse_fault",
    "parse_faults",
    "register_fault_kind",
]
