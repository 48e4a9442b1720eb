"""Property-based fuzzing of every RPC of every service, through real gRPC servers.

Servers (port 0, identity by token, as the launcher runs them): the fed server
(FedServer, RunInfo, Telemetry), the control server (Controller, Telemetry,
RunInfo) and the main server (MainServer, a tiny model). Hypothesis draws
hostile or malformed calls: wrong ids, rounds and dtypes, shapes that do not
match the bytes, NaN and Inf, oversized fields, truncated and garbage
safetensors, out-of-order stream frames, impersonation, missing or unknown
credentials. Each must end with the status listed for it, leave every
server's state exactly as it was (a snapshot compared before and after), and
leave the servers up. Deterministic (derandomize), bounded, deadline-free;
test_enough_hostile_calls checks that at least 1,000 were sent in all.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fed_server.aggregate import serialize_adapter, template_from_spec
from fed_server.controller import Controller
from fed_server.controller_service import ControllerService
from fed_server.rounds import RoundState
from fed_server.runinfo import RunInfoService
from fed_server.service import FedServerService
from fedsllm.config import load_scenario
from fedsllm.model.counts import count_scenario
from fedsllm.model.lora import adapter_to_bytes
from fedsllm.proto import (
    controller_pb2,
    controller_pb2_grpc,
    telemetry_pb2,
    telemetry_pb2_grpc,
    tensor_pb2,
)
from fedsllm.proto import fed_server_pb2 as fpb
from fedsllm.proto import fed_server_pb2_grpc as fpb_grpc
from fedsllm.proto import main_server_pb2 as mpb
from fedsllm.proto import main_server_pb2_grpc as mpb_grpc
from fedsllm.roles import build_part
from fedsllm.security.limits import PeerLimits
from fedsllm.telemetry.codec import record_to_proto
from fedsllm.telemetry.collector import TelemetryCollector
from fedsllm.telemetry.records import TelemetryRecord
from fedsllm.telemetry.service import TelemetryService, add_to_server
from fedsllm.trace import Tracer
from fedsllm.wire.messages import StepEndInfo, StepHeaderInfo, TrainHelloInfo
from fedsllm.wire.rpc import wait_healthy
from fedsllm.wire.tensors import Chunk, TensorFrame, frame_to_chunks, tensor_to_frame
from fedsllm.wire.train import train_call
from main_server.compute import ServerTrainer
from main_server.service import MainServerService
from tests.fedsllm.security.peers import (
    CLIENT,
    LAUNCHER,
    MAIN,
    STRANGER_TOKEN,
    channel_as,
    code_of,
    serving,
)
from tests.main_server.service_kit import main_service as build_main_service

C = grpc.StatusCode
HASH = "fuzz-scenario-hash"
BASE = "b" * 64
SPEC = {"m.lora_A.weight": ((2, 8), "float32"), "m.lora_B.weight": ((8, 2), "float32")}
MAX_ADAPTER = 64 * 2**10
B, T = 2, 8


def fuzz(max_examples: int) -> settings:
    return settings(FUZZ, max_examples=max_examples)


FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SENT = {"calls": 0}
"""Hostile calls made, all tests together (>= 1,000 is the requirement)."""


@dataclass
class Servers:
    fed: str
    control: str
    main: str
    state: RoundState
    fed_service: FedServerService
    run_dir: Path
    collector: TelemetryCollector
    controller: Controller
    controller_service: ControllerService
    trainer: ServerTrainer
    main_service: MainServerService
    hidden: int
    channels: dict[Any, grpc.Channel]

    def channel(self, server: str, who: Any) -> grpc.Channel:
        key = (server, who)
        if key not in self.channels:
            token = STRANGER_TOKEN if who == "stranger" else None
            self.channels[key] = channel_as(server, None if who == "stranger" else who, token)
        return self.channels[key]

    def snapshot(self) -> tuple:
        c = self.controller
        return (
            self.state.snapshot(),
            self.fed_service.base_hash,
            self.fed_service.limits.snapshot(),
            sorted(str(p.relative_to(self.run_dir)) for p in self.run_dir.rglob("*")),
            len(self.collector.records()),
            (c._version, c._round, repr(c._registered), repr(c._channels)),
            self.controller_service.limits.snapshot(),
            self.trainer.num_updates,
            hashlib.sha256(self.trainer.adapter_bytes(adapter_to_bytes)).hexdigest(),
            self.main_service.peer_limits.snapshot(),
        )


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[Servers]:
    run_dir = tmp_path_factory.mktemp("fuzz_run")
    state = RoundState(
        num_clients=3,
        num_rounds=3,
        run_dir=run_dir,
        tracer=Tracer(None, "fed_server"),
        template=template_from_spec(SPEC),
    )
    no_rate = PeerLimits(rate=10**9)  # the rate limit has its own test (test_attacks)
    fed_service = FedServerService(
        state,
        HASH,
        num_local_steps=2,
        max_adapter_bytes=MAX_ADAPTER,
        chunk_bytes=1024,
        pull_timeout_s=0.2,
        base_hash=BASE,
        run_dir=run_dir,
        limits=no_rate,
    )
    collector = TelemetryCollector(None)
    telemetry = TelemetryService(collector)
    run_info = RunInfoService({"name": "fuzz"}, HASH, BASE, None, 1024)
    scenario = load_scenario(
        None,
        [
            "model.pretrain_steps=0",
            "data.seq_len=8",
            "clients.num_clients=3",
            "policy.name='optimal'",
            "seed=5",
        ],
    )
    controller = Controller(scenario, counts=count_scenario(scenario))
    controller.start_round(0)
    controller_service = ControllerService(controller, poll_s=0.05)
    controller_service.limits = PeerLimits(rate=10**9)
    part, tokenizer, cfg = build_part(scenario, "server")
    trainer = ServerTrainer(part, lr=1e-2)
    main_service = build_main_service(
        trainer,
        hidden_size=cfg.hidden_size,
        vocab_size=tokenizer.vocab_size,
        max_seq_len=T,
        num_clients=3,
        scenario_hash=HASH,
        max_batch=4,
        max_tensor_bytes=2**16,
        chunk_bytes=1024,
    )
    add_run_info = lambda s: fpb_grpc.add_RunInfoServicer_to_server(run_info, s)  # noqa: E731
    with (
        serving(
            [
                lambda s: fpb_grpc.add_FedServerServicer_to_server(fed_service, s),
                add_to_server(telemetry),
                add_run_info,
            ]
        ) as fed,
        serving(
            [
                lambda s: controller_pb2_grpc.add_ControllerServicer_to_server(
                    controller_service, s
                ),
                add_to_server(telemetry),
                add_run_info,
            ]
        ) as control,
        serving([lambda s: mpb_grpc.add_MainServerServicer_to_server(main_service, s)]) as main,
    ):
        env = Servers(
            fed, control, main, state, fed_service, run_dir, collector, controller,
            controller_service, trainer, main_service, cfg.hidden_size, {},
        )  # fmt: skip
        # Client 0 has joined: pushes as client 0 reach the adapter checks.
        stub = fpb_grpc.FedServerStub(env.channel(fed, CLIENT[0]))
        stub.Join(
            fpb.JoinRequest(client_id=0, num_samples=10, scenario_hash=HASH, base_hash=BASE),
            timeout=5,
        )
        yield env
        for channel in env.channels.values():
            channel.close()
    controller.close()
    collector.close()


@dataclass(frozen=True)
class Attack:
    """One hostile call: `call(servers)` makes it; it must end with one of `expect`."""

    name: str
    call: Callable[[Servers], Any]
    expect: frozenset[grpc.StatusCode]

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        return f"Attack({self.name}, expect={sorted(c.name for c in self.expect)})"


def attack(name: str, call: Callable[[Servers], Any], *expect: grpc.StatusCode) -> Attack:
    return Attack(name, call, frozenset(expect))


def run_attack(servers: Servers, a: Attack) -> None:
    before = servers.snapshot()
    code = code_of(lambda: a.call(servers))
    SENT["calls"] += 1
    assert code in a.expect, f"{a.name}: got {code}, expected {sorted(c.name for c in a.expect)}"
    # Stream slots are given back when the handler ends, a moment after the client
    # saw the status: wait for that, never longer than 2 s.
    deadline = time.monotonic() + 2.0
    after = servers.snapshot()
    while after != before and time.monotonic() < deadline:
        time.sleep(0.01)
        after = servers.snapshot()
    assert after == before, f"{a.name} changed the state"


# ------------------------------------------------------------------ values

ids = st.integers(min_value=0, max_value=2**32 - 1)
other_client = st.sampled_from([1, 2])

callers_without_credentials = st.sampled_from([None, "stranger"])
texts = st.text(max_size=40)
huge = st.integers(min_value=2**31, max_value=2**63 - 1)
bad_floats = st.sampled_from([math.nan, math.inf, -math.inf])
non_main = st.sampled_from([CLIENT[0], CLIENT[1], LAUNCHER])


def good_adapter(value: float = 0.1) -> dict[str, np.ndarray]:
    return {k: np.full(shape, value, dtype=dtype) for k, (shape, dtype) in SPEC.items()}


@st.composite
def hostile_adapters(draw) -> bytes:
    """safetensors (or not) that the model's template refuses."""
    kind = draw(
        st.sampled_from(
            ["garbage", "truncated", "one_key", "extra_key", "shape", "dtype", "nan", "empty"]
        )
    )
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=512))
    state = good_adapter()
    key = draw(st.sampled_from(sorted(SPEC)))
    if kind == "truncated":
        blob = serialize_adapter(state)
        return blob[: draw(st.integers(min_value=1, max_value=len(blob) - 1))]
    if kind == "one_key":
        return serialize_adapter({"evil.weight": np.ones((1,), dtype="float32")})
    if kind == "extra_key":
        state["evil.weight"] = np.ones((2,), dtype="float32")
    elif kind == "shape":
        shape = draw(st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple))
        if shape == SPEC[key][0]:
            shape = (*shape, 2)
        state[key] = np.zeros(shape, dtype="float32")
    elif kind == "dtype":
        dtype = draw(st.sampled_from(["float16", "float64", "int32", "int64", "uint8"]))
        state[key] = state[key].astype(dtype)
    elif kind == "nan":
        flat = state[key].reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = draw(bad_floats)
    elif kind == "empty":
        return serialize_adapter({})
    return serialize_adapter(state)


def push_stream(header: fpb.PushAdapterHeader | None, chunks: list[tensor_pb2.AdapterChunk]):
    msgs = [] if header is None else [fpb.PushAdapterRequest(header=header)]
    return iter(msgs + [fpb.PushAdapterRequest(chunk=c) for c in chunks])


def chunks_of(blob: bytes, size: int = 200) -> list[tensor_pb2.AdapterChunk]:
    return [
        tensor_pb2.AdapterChunk(total_bytes=len(blob), offset=o, data=blob[o : o + size])
        for o in range(0, len(blob), size)
    ]


# ------------------------------------------------------------------ FedServer


def fed_stub(s: Servers, who: Any) -> fpb_grpc.FedServerStub:
    return fpb_grpc.FedServerStub(s.channel(s.fed, who))


@st.composite
def fed_attacks(draw) -> Attack:
    kind = draw(st.integers(0, 15))
    if kind == 0:  # Join as another client
        as_id = draw(st.one_of(other_client, ids.filter(lambda i: i != 0)))
        req = fpb.JoinRequest(client_id=as_id, num_samples=10, scenario_hash=HASH)
        return attack("Join as another", lambda s: fed_stub(s, CLIENT[0]).Join(req, timeout=5),
                      C.PERMISSION_DENIED)  # fmt: skip
    if kind == 1:  # Join without credentials
        who = draw(callers_without_credentials)
        req = fpb.JoinRequest(client_id=draw(ids), num_samples=draw(ids), scenario_hash=HASH)
        return attack("Join unauthenticated", lambda s: fed_stub(s, who).Join(req, timeout=5),
                      C.UNAUTHENTICATED)  # fmt: skip
    if kind == 2:  # Join with a wrong scenario hash, or a changed sample count
        changed = draw(st.booleans())
        req = fpb.JoinRequest(
            client_id=0,
            num_samples=draw(st.integers(11, 2**63)) if changed else 10,
            scenario_hash=HASH if changed else draw(texts.filter(lambda t: t != HASH)),
            base_hash=BASE,
        )
        return attack("Join stale", lambda s: fed_stub(s, CLIENT[0]).Join(req, timeout=5),
                      C.FAILED_PRECONDITION)  # fmt: skip
    if kind == 3:  # Join with zero samples
        req = fpb.JoinRequest(client_id=1, num_samples=0, scenario_hash=HASH, base_hash=BASE)
        return attack("Join 0 samples", lambda s: fed_stub(s, CLIENT[1]).Join(req, timeout=5),
                      C.INVALID_ARGUMENT)  # fmt: skip
    if kind == 4:  # Join by the main server or the launcher
        who = draw(st.sampled_from([MAIN, LAUNCHER]))
        req = fpb.JoinRequest(client_id=0, num_samples=10, scenario_hash=HASH, base_hash=BASE)
        return attack("Join by a server", lambda s: fed_stub(s, who).Join(req, timeout=5),
                      C.PERMISSION_DENIED)  # fmt: skip
    if kind == 5:  # push as another client, however well-formed
        as_id = draw(other_client)
        blob = serialize_adapter(good_adapter(draw(st.floats(-50, 50))))
        header = fpb.PushAdapterHeader(client_id=as_id, round=0, num_samples=10,
                                       total_bytes=len(blob))  # fmt: skip
        return attack(
            "push as another",
            lambda s: fed_stub(s, CLIENT[0]).PushAdapter(
                push_stream(header, chunks_of(blob)), timeout=5
            ),
            C.PERMISSION_DENIED,
        )
    if kind == 6:  # hostile adapter contents, announced honestly
        blob = draw(hostile_adapters())
        header = fpb.PushAdapterHeader(client_id=0, round=0, num_samples=10,
                                       total_bytes=len(blob))  # fmt: skip
        return attack(
            "hostile adapter",
            lambda s: fed_stub(s, CLIENT[0]).PushAdapter(
                push_stream(header, chunks_of(blob)), timeout=5
            ),
            C.INVALID_ARGUMENT,
        )
    if kind == 7:  # broken framing: out-of-order, overlapping, wrong totals, oversize
        blob = serialize_adapter(good_adapter())
        chunks = chunks_of(blob, draw(st.integers(16, 300)))
        how = draw(st.sampled_from(["swap", "dup", "total", "gap", "over", "no_header",
                                    "announce_big", "missing", "chunk_header"]))  # fmt: skip
        total = len(blob)
        if how == "swap" and len(chunks) > 1:
            chunks[0], chunks[1] = chunks[1], chunks[0]
        elif how == "dup":
            chunks.insert(1, chunks[0])
        elif how == "total":
            chunks[-1].total_bytes = total + draw(st.integers(1, 10))
        elif how == "gap":
            chunks[-1].offset += draw(st.integers(1, 10))
        elif how == "over":
            chunks[-1].data += draw(st.binary(min_size=1, max_size=64))
        elif how == "announce_big":
            total = draw(st.integers(MAX_ADAPTER + 1, 2**63))
        elif how == "missing":
            chunks = chunks[:-1] if len(chunks) > 1 else []
        elif how == "chunk_header":
            chunks.append(chunks[0])
        else:  # swap with one chunk, or no header
            total = -1
        header = None if total == -1 else fpb.PushAdapterHeader(
            client_id=0, round=0, num_samples=10, total_bytes=total
        )  # fmt: skip
        return attack(
            f"broken framing ({how})",
            lambda s: fed_stub(s, CLIENT[0]).PushAdapter(push_stream(header, chunks), timeout=5),
            C.RESOURCE_EXHAUSTED if how == "announce_big" else C.INVALID_ARGUMENT,
        )
    if kind == 8:  # a sound adapter for a wrong round, or from a client that never joined
        blob = serialize_adapter(good_adapter())
        stranger = draw(st.booleans())
        k = 1 if stranger else 0
        header = fpb.PushAdapterHeader(client_id=k, round=0 if stranger else draw(
            st.integers(1, 2**32 - 1)), num_samples=10, total_bytes=len(blob))  # fmt: skip
        return attack(
            "push stale",
            lambda s: fed_stub(s, CLIENT[k]).PushAdapter(
                push_stream(header, chunks_of(blob)), timeout=5
            ),
            # Not joined: rejoin (FAILED_PRECONDITION); a round not open: OUT_OF_RANGE.
            C.FAILED_PRECONDITION if stranger else C.OUT_OF_RANGE,
        )
    if kind == 9:  # a sound adapter with another sample count, or zero samples
        blob = serialize_adapter(good_adapter())
        n = draw(st.one_of(st.just(0), st.integers(11, 2**63)))
        header = fpb.PushAdapterHeader(client_id=0, round=0, num_samples=n, total_bytes=len(blob))
        return attack(
            "push num_samples",
            lambda s: fed_stub(s, CLIENT[0]).PushAdapter(
                push_stream(header, chunks_of(blob)), timeout=5
            ),
            C.INVALID_ARGUMENT,
        )
    if kind == 10:  # pushes and pulls without credentials
        who = draw(callers_without_credentials)
        blob = serialize_adapter(good_adapter())
        header = fpb.PushAdapterHeader(client_id=0, round=0, num_samples=10, total_bytes=len(blob))
        if draw(st.booleans()):
            return attack(
                "push unauthenticated",
                lambda s: fed_stub(s, who).PushAdapter(
                    push_stream(header, chunks_of(blob)), timeout=5
                ),
                C.UNAUTHENTICATED,
            )
        req = fpb.PullGlobalRequest(client_id=0, round=0)
        return attack("pull unauthenticated",
                      lambda s: fed_stub(s, who).PullGlobal(req, timeout=5),
                      C.UNAUTHENTICATED)  # fmt: skip
    if kind == 11:  # pull another client's global, or a round that does not exist
        if draw(st.booleans()):
            req = fpb.PullGlobalRequest(client_id=draw(other_client), round=0)
            return attack("pull as another",
                          lambda s: fed_stub(s, CLIENT[0]).PullGlobal(req, timeout=5),
                          C.PERMISSION_DENIED)  # fmt: skip
        req = fpb.PullGlobalRequest(client_id=0, round=draw(st.integers(3, 2**32 - 1)))
        return attack("pull bad round",
                      lambda s: fed_stub(s, CLIENT[0]).PullGlobal(req, timeout=5),
                      C.INVALID_ARGUMENT)  # fmt: skip
    if kind == 12:  # JoinMainServer by a non-main server, or with wrong hashes
        who = draw(st.sampled_from([CLIENT[0], CLIENT[2], LAUNCHER, None, "stranger"]))
        req = fpb.MainServerJoinRequest(scenario_hash=HASH, base_hash=BASE)
        expect = C.UNAUTHENTICATED if who in (None, "stranger") else C.PERMISSION_DENIED
        if draw(st.booleans()):
            who, expect = MAIN, C.FAILED_PRECONDITION
            if draw(st.booleans()):
                req = fpb.MainServerJoinRequest(scenario_hash=draw(texts.filter(
                    lambda t: t != HASH)), base_hash=BASE)  # fmt: skip
            else:
                req = fpb.MainServerJoinRequest(scenario_hash=HASH, base_hash=draw(
                    texts.filter(lambda t: t != BASE)))  # fmt: skip
        return attack("JoinMainServer", lambda s: fed_stub(s, who).JoinMainServer(req, timeout=5),
                      expect)  # fmt: skip
    if kind == 13:  # PushServerAdapter by a non-main server
        who = draw(non_main)
        blob = serialize_adapter(good_adapter())

        def stream():
            yield fpb.PushServerAdapterRequest(
                header=fpb.PushServerAdapterHeader(round=0, final=False, total_bytes=len(blob))
            )
            for c in chunks_of(blob):
                yield fpb.PushServerAdapterRequest(chunk=c)

        return attack("PushServerAdapter by a client",
                      lambda s: fed_stub(s, who).PushServerAdapter(stream(), timeout=5),
                      C.PERMISSION_DENIED)  # fmt: skip
    if kind == 14:  # PushServerAdapter from the main server: bad round (a file name) or framing
        blob = draw(st.binary(min_size=1, max_size=300))
        bad_round = draw(st.booleans())
        rnd = draw(st.one_of(st.integers(3, 2**31 - 1), st.integers(-(2**31), -2))) if bad_round \
            else 0  # fmt: skip
        total = len(blob) if bad_round else len(blob) + draw(st.integers(1, 100))

        def stream():
            yield fpb.PushServerAdapterRequest(
                header=fpb.PushServerAdapterHeader(round=rnd, final=False, total_bytes=total)
            )
            for c in chunks_of(blob):
                c.total_bytes = total
                yield fpb.PushServerAdapterRequest(chunk=c)

        return attack("PushServerAdapter bad", lambda s: fed_stub(s, MAIN).PushServerAdapter(
            stream(), timeout=5), C.INVALID_ARGUMENT)  # fmt: skip
    # Status / RunInfo without credentials; FetchBase of a base nobody serves
    who = draw(callers_without_credentials)
    which = draw(st.sampled_from(["Status", "GetScenario", "FetchBase", "FetchBase-auth"]))
    if which == "Status":
        return attack("Status unauthenticated", lambda s: fed_stub(s, who).Status(
            fpb.StatusRequest(), timeout=5), C.UNAUTHENTICATED)  # fmt: skip
    info = lambda s, w: fpb_grpc.RunInfoStub(s.channel(s.fed, w))  # noqa: E731
    if which == "GetScenario":
        return attack("GetScenario unauthenticated", lambda s: info(s, who).GetScenario(
            fpb.GetScenarioRequest(), timeout=5), C.UNAUTHENTICATED)  # fmt: skip
    if which == "FetchBase":
        return attack("FetchBase unauthenticated", lambda s: info(s, who).FetchBase(
            fpb.FetchBaseRequest(), timeout=5), C.UNAUTHENTICATED)  # fmt: skip
    return attack("FetchBase nothing served", lambda s: info(s, CLIENT[1]).FetchBase(
        fpb.FetchBaseRequest(), timeout=5), C.FAILED_PRECONDITION)  # fmt: skip


@fuzz(420)
@given(a=fed_attacks())
def test_fed_server_refuses_hostile_calls(servers, a: Attack) -> None:
    run_attack(servers, a)


# ------------------------------------------------------------------ Telemetry + Controller


def record(role: str, source_client: int, seq: int) -> Any:
    rec = TelemetryRecord(kind="event", name="round_done", role=role,
                          source_client=source_client, seq=seq)  # fmt: skip
    return record_to_proto(rec)


ROLE = {
    "client": telemetry_pb2.TELEMETRY_ROLE_CLIENT,
    "main_server": telemetry_pb2.TELEMETRY_ROLE_MAIN_SERVER,
    "fed_server": telemetry_pb2.TELEMETRY_ROLE_FED_SERVER,
    "launcher": telemetry_pb2.TELEMETRY_ROLE_LAUNCHER,
}


@st.composite
def control_attacks(draw) -> Attack:
    server_of = draw(st.sampled_from(["fed", "control"]))
    tele = lambda s, w: telemetry_pb2_grpc.TelemetryStub(  # noqa: E731
        s.channel(getattr(s, server_of), w)
    )
    ctl = lambda s, w: controller_pb2_grpc.ControllerStub(s.channel(s.control, w))  # noqa: E731
    kind = draw(st.integers(0, 8))
    if kind == 0:  # telemetry pushed as another role or client
        role = draw(st.sampled_from(["main_server", "fed_server", "launcher", "client"]))
        src = draw(other_client) if role == "client" else -1
        req = telemetry_pb2.PushTelemetryRequest(role=ROLE[role], source_client=src,
                                                 records=[record(role, src, 1)])  # fmt: skip
        return attack("telemetry as another", lambda s: tele(s, CLIENT[0]).Push(req, timeout=5),
                      C.PERMISSION_DENIED)  # fmt: skip
    if kind == 1:  # telemetry with records of another source, or without a sequence number
        mismatch = draw(st.booleans())
        recs = [record("client", 1 if mismatch else 0, 1 if mismatch else 0)]
        req = telemetry_pb2.PushTelemetryRequest(role=ROLE["client"], source_client=0,
                                                 records=recs)  # fmt: skip
        return attack("telemetry records", lambda s: tele(s, CLIENT[0]).Push(req, timeout=5),
                      C.INVALID_ARGUMENT)  # fmt: skip
    if kind == 2:  # telemetry with an unknown role value
        req = telemetry_pb2.PushTelemetryRequest(role=draw(st.sampled_from([0, 6, 7, 99])))
        return attack("telemetry role", lambda s: tele(s, CLIENT[0]).Push(req, timeout=5),
                      C.INVALID_ARGUMENT)  # fmt: skip
    if kind == 3:  # telemetry Push or Subscribe without credentials; Subscribe by a client
        who = draw(callers_without_credentials)
        if draw(st.booleans()):
            req = telemetry_pb2.PushTelemetryRequest(role=ROLE["client"], source_client=0)
            push = lambda s: tele(s, who).Push(req, timeout=5)  # noqa: E731
            return attack("telemetry unauthenticated", push, C.UNAUTHENTICATED)
        sub = telemetry_pb2.SubscribeTelemetryRequest(from_index=draw(st.integers(0, 2**32)))
        if draw(st.booleans()):
            watch = lambda s: tele(s, who).Subscribe(sub, timeout=5)  # noqa: E731
            return attack("watch unauthenticated", watch, C.UNAUTHENTICATED)
        client = CLIENT[draw(st.integers(0, 2))]
        watch = lambda s: tele(s, client).Subscribe(sub, timeout=5)  # noqa: E731
        return attack("watch by a client", watch, C.PERMISSION_DENIED)
    if kind == 4:  # Register as another client, or by a server
        who = draw(st.sampled_from([CLIENT[0], MAIN, LAUNCHER]))
        req = controller_pb2.RegisterRequest(client_id=draw(other_client), num_samples=10,
                                             flops=1e9, distance_m=10.0)  # fmt: skip
        return attack("Register as another", lambda s: ctl(s, who).Register(req, timeout=5),
                      C.PERMISSION_DENIED)  # fmt: skip
    if kind == 5:  # Register as itself with NaN/Inf or zero fields
        field = draw(st.sampled_from(["flops", "distance_m", "gain_db", "tx_power_dbm", "n0"]))
        values = dict(num_samples=10, flops=1e9, distance_m=10.0, gain_db=0.0, tx_power_dbm=0.0)
        if field == "n0":
            values["num_samples"] = 0
        else:
            values[field] = draw(bad_floats)
        req = controller_pb2.RegisterRequest(client_id=0, **values)
        return attack("Register bad values", lambda s: ctl(s, CLIENT[0]).Register(req, timeout=5),
                      C.INVALID_ARGUMENT)  # fmt: skip
    if kind == 6:  # ReportChannel as another client, or with NaN
        if draw(st.booleans()):
            req = controller_pb2.ReportChannelRequest(client_id=draw(other_client), gain_db=-3.0,
                                                      distance_m=10.0)  # fmt: skip
            return attack("ReportChannel as another",
                          lambda s: ctl(s, CLIENT[0]).ReportChannel(req, timeout=5),
                          C.PERMISSION_DENIED)  # fmt: skip
        req = controller_pb2.ReportChannelRequest(client_id=0, gain_db=draw(bad_floats),
                                                  distance_m=10.0)  # fmt: skip
        return attack("ReportChannel NaN", lambda s: ctl(s, CLIENT[0]).ReportChannel(
            req, timeout=5), C.INVALID_ARGUMENT)  # fmt: skip
    if kind == 7:  # Subscribe to another client's allocation
        req = controller_pb2.SubscribeRequest(client_id=draw(st.one_of(other_client, ids.filter(
            lambda i: i != 0))))  # fmt: skip
        return attack("Subscribe as another",
                      lambda s: ctl(s, CLIENT[0]).Subscribe(req, timeout=5),
                      C.PERMISSION_DENIED)  # fmt: skip
    who = draw(callers_without_credentials)
    method = draw(st.sampled_from(["Register", "Subscribe", "ReportChannel"]))
    reqs = {
        "Register": controller_pb2.RegisterRequest(client_id=0, num_samples=10, flops=1e9),
        "Subscribe": controller_pb2.SubscribeRequest(client_id=0),
        "ReportChannel": controller_pb2.ReportChannelRequest(client_id=0, distance_m=1.0),
    }
    return attack(f"{method} unauthenticated",
                  lambda s: getattr(ctl(s, who), method)(reqs[method], timeout=5),
                  C.UNAUTHENTICATED)  # fmt: skip


@fuzz(260)
@given(a=control_attacks())
def test_telemetry_and_controller_refuse_hostile_calls(servers, a: Attack) -> None:
    run_attack(servers, a)


# ------------------------------------------------------------------ MainServer


def hello(client_id: int = 0, scenario_hash: str = HASH, dtype: str = "float32") -> Any:
    return TrainHelloInfo(client_id=client_id, scenario_hash=scenario_hash, wire_dtype=dtype)


def header(names=("activations", "attention_mask", "labels"), mode: str = "train") -> Any:
    return StepHeaderInfo(round=0, step=0, mode=mode, downlink_bps=0.0, tensor_names=names)


def step_tensors(hidden: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "activations": torch.randn(B, T, hidden, generator=g),
        "attention_mask": torch.ones(B, T, dtype=torch.int64),
        "labels": torch.randint(3, 200, (B, T), generator=g),
    }


def frames_of(t: dict[str, torch.Tensor]) -> list[TensorFrame]:
    return [tensor_to_frame(n, t[n]) for n in ("activations", "attention_mask", "labels")]


def chunks(frames: list[TensorFrame]) -> list[Any]:
    return [c for f in frames for c in frame_to_chunks(f, 1024)]


@st.composite
def main_attacks(draw) -> Attack:
    kind = draw(st.integers(0, 7))
    h = 64  # the tiny preset's hidden size (checked in the fixture's StepLimits)

    def train(items: list[Any], who: Any = CLIENT[0]) -> Callable[[Servers], Any]:
        return lambda s: list(train_call(s.channel(s.main, who))(iter(items), timeout=10))

    if kind == 0:  # a stream as another client (in range: PERMISSION_DENIED)
        as_id = draw(other_client)
        items = [hello(as_id), header(), *chunks(frames_of(step_tensors(h))), StepEndInfo()]
        return attack("Train as another", train(items), C.PERMISSION_DENIED)
    if kind == 1:  # hello out of range, wrong hash or wire dtype; no credentials
        how = draw(st.sampled_from(["id", "hash", "dtype", "anon"]))
        if how == "anon":
            return attack("Train unauthenticated",
                          train([hello()], draw(callers_without_credentials)),
                          C.UNAUTHENTICATED)  # fmt: skip
        if how == "id":
            return attack("hello id", train([hello(draw(st.integers(3, 2**32 - 1)))]),
                          C.INVALID_ARGUMENT)  # fmt: skip
        if how == "hash":
            return attack("hello hash", train([hello(scenario_hash=draw(texts.filter(
                lambda t: t != HASH)))]), C.FAILED_PRECONDITION, C.INVALID_ARGUMENT)  # fmt: skip
        return attack("hello dtype", train([hello(dtype=draw(st.sampled_from(
            ["float16", "bfloat16"])))]), C.INVALID_ARGUMENT)  # fmt: skip
    t = step_tensors(h)
    if kind == 2:  # NaN / Inf activations
        flat = t["activations"].view(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(bad_floats)
        return attack("NaN activations",
                      train([hello(), header(), *chunks(frames_of(t)), StepEndInfo()]),
                      C.INVALID_ARGUMENT)  # fmt: skip
    if kind == 3:  # shapes that do not match the bytes, or the model
        frames = frames_of(t)
        act = frames[0]
        how = draw(st.sampled_from(["bytes", "hidden", "batch_mismatch", "too_long"]))
        if how == "bytes":
            shape = (B, T, h + draw(st.integers(1, 8)))
            frames[0] = TensorFrame(act.name, act.dtype, shape, act.data)
        elif how == "hidden":
            hid = draw(st.integers(1, 128).filter(lambda x: x != h))
            frames[0] = tensor_to_frame("activations", torch.zeros(B, T, hid))
        elif how == "batch_mismatch":
            frames[1] = tensor_to_frame("attention_mask", torch.ones(B + 1, T, dtype=torch.int64))
        else:
            frames = frames_of({
                "activations": torch.zeros(B, T * 2, h),
                "attention_mask": torch.ones(B, T * 2, dtype=torch.int64),
                "labels": torch.full((B, T * 2), 5, dtype=torch.int64),
            })  # fmt: skip
        return attack(f"shape ({how})",
                      train([hello(), header(), *chunks(frames), StepEndInfo()]),
                      C.INVALID_ARGUMENT)  # fmt: skip
    if kind == 4:  # wrong dtypes, label and mask values
        how = draw(st.sampled_from(["act_dtype", "mask_dtype", "labels", "mask", "no_tokens"]))
        frames = frames_of(t)
        if how == "act_dtype":
            frames[0] = tensor_to_frame("activations", t["activations"].to(torch.float16))
        elif how == "mask_dtype":
            frames[1] = tensor_to_frame("attention_mask", torch.ones(B, T, dtype=torch.float32))
        elif how == "labels":
            labels = t["labels"].clone()
            labels[0, draw(st.integers(0, T - 1))] = draw(
                st.one_of(
                    st.integers(-(2**62), -101), st.integers(-99, -1), st.integers(10**6, 2**62)
                )
            )
            frames[2] = tensor_to_frame("labels", labels)
        elif how == "mask":
            mask = t["attention_mask"].clone()
            mask[1, draw(st.integers(0, T - 1))] = draw(st.integers(2, 2**40))
            frames[1] = tensor_to_frame("attention_mask", mask)
        else:
            frames[2] = tensor_to_frame("labels", torch.full((B, T), -100, dtype=torch.int64))
        return attack(f"values ({how})",
                      train([hello(), header(), *chunks(frames), StepEndInfo()]),
                      C.INVALID_ARGUMENT)  # fmt: skip
    if kind == 5:  # out-of-order frames
        parts = chunks(frames_of(t))
        how = draw(st.sampled_from(["no_hello", "hello_twice", "chunk_first", "end_first",
                                    "missing_chunk", "header_twice", "names", "swap"]))  # fmt: skip
        if how == "no_hello":
            items = [header(), *parts, StepEndInfo()]
        elif how == "hello_twice":
            items = [hello(), hello()]
        elif how == "chunk_first":
            items = [hello(), parts[0], header(), *parts, StepEndInfo()]
        elif how == "end_first":
            items = [hello(), StepEndInfo()]
        elif how == "missing_chunk":
            drop = draw(st.integers(0, len(parts) - 1))
            items = [hello(), header(), *parts[:drop], *parts[drop + 1 :], StepEndInfo()]
        elif how == "header_twice":
            items = [hello(), header(), header(), *parts, StepEndInfo()]
        elif how == "names":
            names = draw(st.sampled_from([("activations",), ("activations", "labels", "x"),
                                          ("labels", "labels", "labels")]))  # fmt: skip
            items = [hello(), header(names), *parts, StepEndInfo()]
        else:
            items = [hello(), header(), *reversed(parts), StepEndInfo()]
        return attack(f"order ({how})", train(items), C.INVALID_ARGUMENT)
    if kind == 6:  # oversized tensors and garbage messages
        if draw(st.booleans()):
            shape = (64, 512, h)  # 8 MiB announced, past max_tensor_bytes (64 KiB)
            oversized = Chunk("activations", "float32", shape, 4 * 64 * 512 * h, 0, bytes(4 * h))
            return attack("oversized tensor", train([hello(), header(), oversized]),
                          C.INVALID_ARGUMENT)  # fmt: skip
        garbage = draw(st.binary(min_size=1, max_size=200))
        return attack("garbage message", train([hello(), garbage]), C.INVALID_ARGUMENT,
                      C.INTERNAL)  # fmt: skip
    who = draw(st.sampled_from([CLIENT[0], CLIENT[2], None, "stranger"]))
    expect = C.UNAUTHENTICATED if who in (None, "stranger") else C.PERMISSION_DENIED

    def get(s: Servers) -> Any:
        stub = mpb_grpc.MainServerStub(s.channel(s.main, who))
        return stub.GetServerAdapter(mpb.GetServerAdapterRequest(), timeout=5)

    return attack("GetServerAdapter", get, expect)


@fuzz(340)
@given(a=main_attacks())
def test_main_server_refuses_hostile_calls(servers, a: Attack) -> None:
    assert servers.hidden == 64
    run_attack(servers, a)


def test_enough_hostile_calls_and_servers_up(servers) -> None:
    assert SENT["calls"] >= 1000, SENT
    for address in (servers.fed, servers.control, servers.main):
        wait_healthy(address, 5.0)
    stub = fpb_grpc.FedServerStub(servers.channel(servers.fed, CLIENT[0]))
    assert stub.Status(fpb.StatusRequest(), timeout=5).clients_joined == [0]
