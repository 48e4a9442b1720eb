"""Synthetic trace records with known answers, and a run directory holding them: shared by
the report's tests and compare's measurement tests. Every record is built in the run
directory's JSON form and read through the typed schema (`typed`), as read_telemetry does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedsllm.config import load_scenario
from fedsllm.telemetry.records import TelemetryRecord, from_dict

T0 = 1000.0
DIL = 2.0
"""Synthetic traces are written in wall seconds with time dilation 2: every wall
duration below is twice its emulated value."""


def typed(doc: dict[str, Any]) -> TelemetryRecord:
    """A record given in its JSON form (TelemetryRecord.to_dict's keys, `source` optional:
    "client_<client>" for a client, else the role), read through the typed schema."""
    source = f"client_{doc['client']}" if doc["role"] == "client" else doc["role"]
    return from_dict({"source": source, **doc})


def _span(
    role: str,
    client: int,
    rnd: int,
    step: int,
    name: str,
    t0: float,
    t1: float,
    nbytes: int = 0,
    extra: dict[str, Any] | None = None,
) -> TelemetryRecord:
    return typed(
        {
            "kind": "span",
            "role": role,
            "client": client,
            "round": rnd,
            "step": step,
            "name": name,
            "t0": T0 + t0,
            "t1": T0 + t1,
            "bytes": nbytes,
            "extra": extra or {},
        }
    )


def _event(role: str, client: int, rnd: int, name: str, t: float, **extra: Any) -> TelemetryRecord:
    return typed(
        {
            "kind": "event",
            "role": role,
            "client": client,
            "round": rnd,
            "step": -1,
            "name": name,
            "t0": T0 + t,
            "t1": T0 + t,
            "bytes": 0,
            "extra": extra,
        }
    )


def _device(target_s: float, overrun_s: float = 0.0) -> dict[str, Any]:
    return {
        "device": {
            "label": "x",
            "flops": 1e6,
            "target_s": target_s,
            "compute_s": target_s + overrun_s,
            "padded_s": 0.0,
            "overrun_s": overrun_s,
            "done": True,
        }
    }


def _one_step(
    k: int,
    rnd: int,
    t: float,
    uplink_wall: float,
    *,
    client_overrun: float = 0.0,
    server_overrun: float = 0.0,
    downlink_bps: float | None = None,
) -> list[TelemetryRecord]:
    """One local iteration starting at wall offset t: forward 0.2, uplink `uplink_wall`,
    server 0.2 + downlink 0.2 inside wait_reply, backward 0.2 (wall seconds).
    `downlink_bps`: the rate the step asked the main server to pace its gradient at
    (0 = not paced), recorded on wait_reply; None leaves it out (an older trace)."""
    u = t + 0.2 + uplink_wall
    reply = {} if downlink_bps is None else {"downlink_bps": downlink_bps}
    return [
        _span("client", k, rnd, 0, "client_forward", t, t + 0.2, extra=_device(0.1)),
        _span("client", k, rnd, 0, "uplink", t + 0.2, u, 100_000),
        _span("client", k, rnd, 0, "wait_reply", u, u + 0.4, 50_000, extra=reply),
        _span(
            "main_server",
            k,
            rnd,
            0,
            "server_compute",
            u,
            u + 0.2,
            extra={**_device(0.08, server_overrun), "mode": "train", "loss": 1.0},
        ),
        _span("main_server", k, rnd, 0, "downlink", u + 0.2, u + 0.4, 50_000),
        _span(
            "client",
            k,
            rnd,
            0,
            "client_backward",
            u + 0.4,
            u + 0.6,
            extra=_device(0.1, client_overrun),
        ),
        _event("client", k, rnd, "train_loss", u + 0.6, loss=2.0 + rnd, num_tokens=10),
    ]


def _alloc(k: int, rnd: int, version: int, up: float, down: float, t: float) -> TelemetryRecord:
    return _event(
        "fed_server",
        k,
        rnd,
        "allocation",
        t,
        version=version,
        round=rnd,
        client_id=k,
        policy="optimal",
        bandwidth_hz=1e6,
        share=0.5,
        uplink_bps=up,
        downlink_bps=down,
        num_local_steps=1,
        eta=0.5,
        predicted_round_s=0.5,
        predicted_total_s=1.0,
        issued_unix_s=T0 + t,
        num_rounds=2,
    )


def synthetic_records(with_allocations: bool = True) -> list[TelemetryRecord]:
    """Two clients, two rounds, one local iteration each (wall seconds, dilation 2).

    Round 0: window [0, 2.0] wall (both clients start at 0; aggregation [1.8, 2.0]).
    Round 1: window [2.0, 4.2] wall; eval on client 0 in [2.0, 2.4] is cut out.
    """
    recs: list[TelemetryRecord] = [
        _span("client", 0, -1, -1, "eval", -1.0, 0.0),  # before the first round: no overlap
        _event("client", 0, -1, "val_loss", 0.0, loss=5.0),
    ]
    # round 0: client 0 uplink 0.4 wall, client 1 uplink 0.6 wall
    recs += _one_step(0, 0, 0.0, 0.4, client_overrun=0.05, server_overrun=0.02)
    recs.append(_span("client", 0, 0, -1, "adapter_upload", 1.2, 1.4, 20_000))
    recs += _one_step(1, 0, 0.0, 0.6)
    recs.append(_span("client", 1, 0, -1, "adapter_upload", 1.4, 1.6, 20_000))
    recs.append(_span("fed_server", -1, 0, -1, "aggregation", 1.8, 2.0, 20_000))
    recs.append(_event("fed_server", -1, 0, "round_done", 2.0, num_clients=2))
    # round 1: client 0 evaluates first, then downloads and trains
    recs.append(_span("client", 0, 0, -1, "eval", 2.0, 2.4))
    recs.append(_event("client", 0, 0, "val_loss", 2.4, loss=4.0))
    recs.append(_span("client", 0, 1, -1, "global_download", 2.4, 2.6, 20_000))
    recs += _one_step(0, 1, 2.6, 0.4)
    recs.append(_span("client", 0, 1, -1, "adapter_upload", 3.8, 4.0, 20_000))
    recs.append(_span("client", 1, 1, -1, "global_download", 2.0, 2.1, 20_000))
    recs += _one_step(1, 1, 2.1, 0.4)
    recs.append(_span("client", 1, 1, -1, "adapter_upload", 3.3, 3.5, 20_000))
    recs.append(_span("fed_server", -1, 1, -1, "aggregation", 4.0, 4.2, 20_000))
    recs.append(_event("fed_server", -1, 1, "round_done", 4.2, num_clients=2))
    recs.append(_event("client", 0, 1, "val_loss", 4.6, loss=3.0))
    recs.append(_span("client", 0, 2, -1, "global_download", 4.2, 4.3, 20_000))  # final pull
    recs.append(
        _event(
            "client",
            0,
            -1,
            "link_stats",
            5.0,
            direction="up",
            num_bytes=240_000,
            num_chunks=4,
            busy_s=0.8,
            shaped_bytes=200_000,
        )
    )
    if with_allocations:
        recs += [
            _alloc(0, 0, 1, 2e6, 0.0, -0.5),
            _alloc(1, 0, 1, 1e6, 0.0, -0.5),
            _alloc(0, 1, 2, 2e6, 1.6e6, 1.9),
            _alloc(1, 1, 2, 2e6, 1.6e6, 1.9),
            _alloc(0, 2, 3, 4e6, 0.0, 4.1),  # for round 2: must not apply to round 1
            _alloc(1, 2, 3, 4e6, 0.0, 4.1),
        ]
    return sorted(recs, key=lambda r: r.t0)


def make_run_dir(root: Path, records: list[TelemetryRecord], *overrides: str) -> Path:
    scenario = load_scenario(
        None,
        [
            "clients.num_clients=2",
            f"link.time_dilation={DIL}",
            "link.emulate_compute=true",
            'link.backend="token"',
            "devices.aggregation_s=0.01",
            "training.batch_size=4",
            "data.seq_len=32",
            "model.pretrain_steps=0",
            *overrides,
        ],
    )
    (root / "trace").mkdir(parents=True)
    doc = {"scenario_hash": "synthetic", **scenario.to_dict()}
    (root / "scenario.json").write_text(json.dumps(doc))
    by_source: dict[str, list[TelemetryRecord]] = {}
    for rec in records:
        by_source.setdefault(rec.source, []).append(rec)
    for name, recs in by_source.items():
        with open(root / "trace" / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for seq, rec in enumerate(recs, start=1):
                fh.write(json.dumps(rec.numbered(seq).to_dict()) + "\n")
    return root
