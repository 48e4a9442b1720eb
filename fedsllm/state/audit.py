"""Nothing lost, proven: recompute the global adapter from the updates the rounds accepted.

Input: the closed rounds' records (fedsllm/state/ledger.py RoundRecord, or
their dicts as FedServerStore keeps them), a way to fetch each accepted
update's tensors, the initial global adapter (None: the clients' identical
init) and the adapter the run produced. Each round's global adapter is
recomputed as the FedAvg of exactly the updates its record lists, in client
order, with weights float(D_k); the last one must equal the produced adapter.

Equality is bit-exact by default (`atol=0`): the average is
fedsllm.model.fedavg, the very function the fed server aggregates with, over
the same updates in the same (client id) order, so an honest run reproduces
every bit. A tolerance is
only for adapters aggregated elsewhere in another order; the result states
the largest difference either way.

Also reported: an update counted twice (a client twice in a round, a key in
two rounds, a round closed twice), an update missing from the store or whose
tensors no longer match the digest the round accepted, and rounds absent
from the records. `audit_rounds` does no I/O besides the `get_update` callable;
`audit_run_dir` reads a run directory (for `fedsllm report` and `fedsllm run`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsllm.model.fedavg import AdapterState, fedavg
from fedsllm.state.format import tensor_digest
from fedsllm.state.ledger import RoundRecord
from fedsllm.state.store import FedServerStore, UpdateKey
from fedsllm.words import counted

Average = Callable[[Sequence[AdapterState], Sequence[float]], AdapterState]


def _parse(blob: bytes) -> AdapterState:
    from safetensors.numpy import load

    return load(blob)


def _parse_produced(what: str, blob: bytes, result: AuditResult) -> AdapterState | None:
    """A produced adapter's tensors, or None with `what` recorded as mismatched when
    the bytes are no safetensors file: a damaged file is what an audit reports, not a
    reason for `fedsllm report` to crash. (Stored updates need no such care: a damaged
    one fails its digest first.)"""
    from safetensors import SafetensorError

    try:
        return _parse(blob)
    except SafetensorError as err:
        result.mismatched.append(f"{what}: not a readable safetensors file ({err})")
        return None


@dataclass
class AuditResult:
    num_rounds: int = 0
    num_updates: int = 0
    doubled: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    """Rounds (or the final adapter) whose recomputed adapter differs from the produced one."""
    max_abs_diff: float = 0.0
    """Largest |recomputed - produced| over every compared tensor."""
    atol: float = 0.0
    compared: bool = False
    """False when there was no produced adapter to compare with."""

    @property
    def ok(self) -> bool:
        return not (self.doubled or self.missing or self.mismatched)

    def lines(self) -> list[str]:
        """Human-readable verdict, for `fedsllm report`."""
        how = "bit-exact" if self.atol == 0 else f"to atol={self.atol:g}"
        verdict = "OK" if self.ok else "FAILED"
        head = (
            f"audit {verdict}: {counted(self.num_rounds, 'round')}, "
            f"{counted(self.num_updates, 'accepted update')}, "
            f"doubled={len(self.doubled)}, missing={len(self.missing)}"
        )
        out = [head]
        if self.compared:
            out.append(
                f"recomputed FedAvg vs produced adapter ({how}): "
                f"{'equal' if not self.mismatched else 'DIFFERENT'}, "
                f"max |diff| = {self.max_abs_diff:.3g}"
            )
        else:
            out.append("no produced adapter to compare with")
        out += [f"doubled: {d}" for d in self.doubled]
        out += [f"missing: {m}" for m in self.missing]
        out += [f"mismatch: {m}" for m in self.mismatched]
        return out


def _compare(
    label: str, want: AdapterState, got: AdapterState, atol: float, result: AuditResult
) -> None:
    if set(want) != set(got):
        result.mismatched.append(f"{label}: tensor names differ")
        return
    for key in sorted(want):
        a, b = want[key], got[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            result.mismatched.append(
                f"{label}[{key}]: {b.dtype}{b.shape}, expected {a.dtype}{a.shape}"
            )
            continue
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
        result.max_abs_diff = max(result.max_abs_diff, diff)
        same = a.tobytes() == b.tobytes() if atol == 0 else diff <= atol
        if not same:
            result.mismatched.append(f"{label}[{key}]: max |diff| {diff:.3g}")


def audit_rounds(
    records: Sequence[RoundRecord | Mapping[str, Any]],
    get_update: Callable[[UpdateKey], bytes | None],
    *,
    initial: bytes | None,
    produced: bytes | None,
    produced_by_round: Callable[[int], bytes | None] | None = None,
    average: Average = fedavg,
    atol: float = 0.0,
) -> AuditResult:
    """Recompute every round from its accepted updates; see the module docstring.

    `produced_by_round(r)`, when given, is also compared round by round, so a
    divergence is pinned to the round it began in."""
    recs = sorted(
        (r if isinstance(r, RoundRecord) else RoundRecord.from_dict(r) for r in records),
        key=lambda r: r.round,
    )
    result = AuditResult(num_rounds=len(recs), atol=atol)
    rounds = Counter(r.round for r in recs)
    result.doubled += [f"round {r} closed {n} times" for r, n in sorted(rounds.items()) if n > 1]
    expected = set(range(max(rounds) + 1)) if rounds else set()
    result.missing += [f"round {r} has no record" for r in sorted(expected - set(rounds))]
    keys = Counter((a.client_id, a.round, a.attempt) for r in recs for a in r.accepted)
    result.doubled += [
        f"update client {c} round {r} attempt {t} listed {n} times"
        for (c, r, t), n in sorted(keys.items())
        if n > 1
    ]
    current = _parse(initial) if initial is not None else None
    for rec in recs:
        per_client = Counter(a.client_id for a in rec.accepted)
        result.doubled += [
            f"round {rec.round}: client {c} counted {n} times"
            for c, n in sorted(per_client.items())
            if n > 1
        ]
        states: list[AdapterState] = []
        weights: list[float] = []
        for acc in sorted(rec.accepted, key=lambda a: a.client_id):
            key = UpdateKey(acc.client_id, acc.round, acc.attempt)
            if acc.round != rec.round:
                result.doubled.append(f"round {rec.round} lists an update of round {acc.round}")
            blob = get_update(key)
            if blob is None:
                result.missing.append(f"round {rec.round}: update of client {acc.client_id} absent")
                continue
            if tensor_digest(blob) != acc.digest:
                result.missing.append(
                    f"round {rec.round}: update of client {acc.client_id} is not the one accepted"
                )
                continue
            states.append(_parse(blob))
            weights.append(float(acc.num_samples))
        result.num_updates += len(states)
        if len(states) != len(rec.accepted) or not states:
            current = None  # cannot recompute this round; later rounds still are
            if not rec.accepted:
                result.missing.append(f"round {rec.round} closed with no update")
            continue
        current = average(states, weights)
        if produced_by_round is not None:
            blob = produced_by_round(rec.round)
            if blob is None:
                result.missing.append(f"round {rec.round}: no produced global adapter")
            elif (state := _parse_produced(f"round {rec.round}", blob, result)) is not None:
                _compare(f"round {rec.round}", current, state, atol, result)
    if produced is not None:
        result.compared = True
        final = _parse_produced("final (the produced adapter)", produced, result)
        if current is None:
            result.mismatched.append("final: could not be recomputed")
        elif final is not None:
            _compare("final", current, final, atol, result)
    return result


def audit_store(
    store: FedServerStore,
    *,
    initial: bytes | None = None,
    produced: bytes | None = None,
    atol: float = 0.0,
) -> AuditResult:
    """`audit_rounds` over a fed server store; `produced` defaults to its latest global."""
    if produced is None:
        produced = store.load().global_adapter
    return audit_rounds(
        store.round_records(),
        store.update,
        initial=initial,
        produced=produced,
        produced_by_round=store.global_adapter,
        atol=atol,
    )


@dataclass(frozen=True)
class RunAudit:
    """The audit of one run directory, or why there was none."""

    result: AuditResult | None
    """None: not audited (`reason` says why)."""
    reason: str = ""

    @property
    def ok(self) -> bool | None:
        """True/False when audited, None when not."""
        return None if self.result is None else self.result.ok

    def line(self) -> str:
        """One plain line, for `fedsllm report` and `fedsllm run`'s summary."""
        res = self.result
        if res is None:
            return f"audit: not run ({self.reason})"
        if not res.compared:
            equal = "no adapter to compare"
        else:
            verdict = "yes" if not res.mismatched else "no"
            equal = f"{verdict} (max diff {res.max_abs_diff:.3g})"
        line = (
            f"audit {'OK' if res.ok else 'FAILED'}: {counted(res.num_rounds, 'round')}, "
            f"{counted(res.num_updates, 'update')}, final adapter equals recomputed FedAvg: {equal}"
        )
        problems = len(res.doubled) + len(res.missing)
        if problems:
            line += f"; {len(res.doubled)} counted twice, {len(res.missing)} missing"
        return line

    def to_dict(self) -> dict[str, Any]:
        res = self.result
        if res is None:
            return {"audited": False, "reason": self.reason, "line": self.line()}
        return {
            "audited": True,
            "ok": res.ok,
            "num_rounds": res.num_rounds,
            "num_updates": res.num_updates,
            "compared": res.compared,
            "final_equal": res.compared and not res.mismatched,
            "max_abs_diff": res.max_abs_diff,
            "doubled": list(res.doubled),
            "missing": list(res.missing),
            "mismatched": list(res.mismatched),
            "line": self.line(),
        }


def audit_run_dir(run_dir: str | Path) -> RunAudit:
    """Audit the run in `run_dir`: every round recomputed from the updates recorded in
    RUN_DIR/state (the fed server's store), the last compared with the adapter the run
    produced (RUN_DIR/adapters/client_global.safetensors; the store's own latest
    global when that file is absent). A run directory without state/ (runs from
    before the stores) or without closed rounds is not audited, and says so."""
    from fedsllm.model.export import CLIENT_ADAPTER
    from fedsllm.state.store import open_store

    run_dir = Path(run_dir)
    state = run_dir / "state"
    if not state.is_dir():
        return RunAudit(None, f"no {state.name}/ in {run_dir}: a run from before state stores")
    store = open_store("fed_server", state)
    assert isinstance(store, FedServerStore)
    if not store.round_records(last=1):
        return RunAudit(None, f"no closed round recorded in {state}")
    # The global client adapter the run produced (fed_server/checkpoint.py).
    produced_file = run_dir / CLIENT_ADAPTER
    produced = produced_file.read_bytes() if produced_file.is_file() else None
    return RunAudit(audit_store(store, produced=produced))
