from __future__ import annotations

import inspect

import numpy as np
import pytest
from safetensors.numpy import load, save

from fed_server.aggregate import parse_adapter, serialize_adapter
from fedsllm.model.fedavg import fedavg
from fedsllm.state.audit import audit_rounds, audit_store
from fedsllm.state.errors import LateUpdateError
from fedsllm.state.format import tensor_digest
from fedsllm.state.ledger import RoundLedger
from fedsllm.state.store import FedServerStore, InMemoryBackend, UpdateKey
from tests.fedsllm.state._blobs import adapter


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("num_states", [1, 2, 5])
def test_fedavg_is_the_data_weighted_mean_in_each_tensors_dtype(
    dtype: str, num_states: int
) -> None:
    """The one FedAvg (fedsllm.model.fedavg), which the fed server aggregates
    and the audit recomputes with, against numpy's weighted mean."""
    rng = np.random.default_rng(num_states)
    states = [load(adapter(100 + i, dtype)) for i in range(num_states)]
    weights = [float(w) for w in rng.integers(1, 1000, num_states)]
    merged = fedavg(states, weights)
    assert merged.keys() == states[0].keys()
    for key, got in merged.items():
        stacked = np.stack([s[key].astype(np.float64) for s in states])
        want = np.average(stacked, axis=0, weights=weights).astype(dtype)
        assert got.dtype == np.dtype(dtype) and got.shape == states[0][key].shape
        # The final cast rounds once (half an ulp of the dtype); summing in
        # another order differs by a few float64 ulps of the largest term.
        summing = 4 * num_states * np.finfo(np.float64).eps * float(np.abs(stacked).max())
        np.testing.assert_allclose(got, want, rtol=np.finfo(dtype).eps, atol=summing)


def test_the_audit_recomputes_with_the_fed_servers_fedavg() -> None:
    """One implementation, so an honest run is reproduced to the bit (a copy
    of its own in the audit could drift from the fed server's unnoticed)."""
    from fed_server import rounds

    assert rounds.fedavg is fedavg
    assert inspect.signature(audit_rounds).parameters["average"].default is fedavg


def _run(num_rounds: int = 3, *, late_client_in_round: int = 1):
    """A fed server's rounds as phase 2 would wire them: ledger + store + fedavg."""
    store = FedServerStore(InMemoryBackend())
    ledger = RoundLedger(num_clients=3, num_rounds=num_rounds, min_clients=2, deadline_s=5.0)
    for c in range(3):
        ledger.join(c, 7 + 13 * c, now=0.0, commit=store.record_join)
    t = 0.0
    blobs: dict[UpdateKey, bytes] = {}
    for r in range(num_rounds):
        for c in range(3):
            blob = adapter(1000 * r + c)
            late = r == late_client_in_round and c == 2
            now = t + (6.0 if late else 1.0)
            key = UpdateKey(c, r, attempt=0)
            try:
                ledger.submit(
                    c,
                    r,
                    0,
                    tensor_digest(blob),
                    now,
                    commit=lambda st, k=key, b=blob: store.record_update(k, b, st),
                )
            except LateUpdateError:
                continue
            blobs[key] = blob
            # a retry after a lost reply: accepted once
            assert ledger.submit(c, r, 0, tensor_digest(blob), now).replayed

        def commit(rec, st) -> None:
            keys = [UpdateKey(a.client_id, a.round, a.attempt) for a in rec.accepted]
            states = [parse_adapter(store.update(k)) for k in keys]
            merged = serialize_adapter(fedavg(states, rec.weights))
            store.record_round(rec.to_dict(), merged, st)

        t += 6.0
        ledger.close(now=t, commit=commit)
    return store, blobs


def test_audit_of_an_honest_run_is_bit_exact() -> None:
    store, _ = _run()
    result = audit_store(store)
    assert result.ok, result.lines()
    assert result.compared and result.max_abs_diff == 0.0
    assert (result.num_rounds, result.num_updates) == (3, 8)  # client 2 was late in round 1
    records = store.round_records()
    assert records[1]["missing"] == {"2": "late"}
    assert "audit OK" in result.lines()[0] and "bit-exact" in result.lines()[1]


def test_no_rounds_means_the_initial_adapter() -> None:
    init = adapter(5)
    assert audit_rounds([], lambda k: None, initial=init, produced=init).ok
    other = audit_rounds([], lambda k: None, initial=init, produced=adapter(6))
    assert not other.ok and other.mismatched


def test_a_produced_adapter_one_ulp_off_fails_bit_exact_but_passes_a_tolerance() -> None:
    store, _ = _run()
    final = load(store.load().global_adapter)
    final["lora_A"] = final["lora_A"].copy()
    final["lora_A"].flat[0] = np.nextafter(final["lora_A"].flat[0], np.float32(np.inf))
    off = save(final)
    exact = audit_store(store, produced=off)
    assert not exact.ok and exact.mismatched[0].startswith("final[lora_A]")
    assert exact.max_abs_diff > 0
    assert audit_store(store, produced=off, atol=1e-6).ok


@pytest.mark.parametrize("damaged", [b"\x9f" * 100, b"", b"truncated"])
def test_a_damaged_produced_adapter_fails_the_audit_instead_of_crashing_it(
    damaged: bytes,
) -> None:
    # Trial 5: random bytes in adapters/client_global.safetensors made `fedsllm report`
    # end in a SafetensorError traceback.
    store, _ = _run()
    result = audit_store(store, produced=damaged)
    assert not result.ok and result.compared
    assert len(result.mismatched) == 1
    assert result.mismatched[0].startswith("final (the produced adapter): not a readable")
    assert "audit FAILED" in result.lines()[0]


def test_a_doubled_update_is_reported() -> None:
    store, _ = _run()
    records = store.round_records()
    records[0]["accepted"].append(dict(records[0]["accepted"][0]))
    result = audit_rounds(records, store.update, initial=None, produced=store.load().global_adapter)
    assert not result.ok
    assert any("client 0 counted 2 times" in d for d in result.doubled)
    assert any("listed 2 times" in d for d in result.doubled)


def test_a_round_closed_twice_is_reported() -> None:
    store, _ = _run()
    records = store.round_records()
    result = audit_rounds(records + [records[-1]], store.update, initial=None, produced=None)
    assert any("closed 2 times" in d for d in result.doubled)


@pytest.mark.parametrize("how", ["absent", "altered"])
def test_a_missing_or_altered_update_is_reported(how: str) -> None:
    store, blobs = _run()
    key = UpdateKey(1, 2, 0)

    def get(k: UpdateKey) -> bytes | None:
        if k != key:
            return store.update(k)
        return None if how == "absent" else adapter(424242)

    result = audit_rounds(
        store.round_records(), get, initial=None, produced=store.load().global_adapter
    )
    assert not result.ok
    assert any("round 2: update of client 1" in m for m in result.missing)
    assert result.mismatched == ["final: could not be recomputed"]


def test_a_missing_round_record_is_reported() -> None:
    store, _ = _run()
    records = store.round_records()
    del records[1]
    result = audit_rounds(
        records,
        store.update,
        initial=None,
        produced=store.load().global_adapter,
        produced_by_round=store.global_adapter,
    )
    assert "round 1 has no record" in result.missing
    assert result.mismatched == []  # round 2 is still recomputed from its own updates


def test_divergence_is_pinned_to_its_round() -> None:
    store, _ = _run()
    wrong = {0: store.global_adapter(0), 1: adapter(9), 2: store.global_adapter(2)}
    result = audit_rounds(
        store.round_records(),
        store.update,
        initial=None,
        produced=store.load().global_adapter,
        produced_by_round=wrong.get,
    )
    assert [m.split("[")[0] for m in result.mismatched] == ["round 1", "round 1"]
