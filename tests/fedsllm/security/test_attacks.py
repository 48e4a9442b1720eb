"""The attacks of issue 11, through a real FedServer (and Telemetry) with identity
on: each is refused with the right status and changes nothing, and the real
peers carry on. On the code before identity and limits, every one of these
succeeded (the push as client 1 was accepted, the one-key adapter became the
round's template, 4 x 200 MiB announcements were allocated)."""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from fed_server.aggregate import serialize_adapter, template_from_spec
from fed_server.rounds import RoundState
from fed_server.service import FedServerService
from fedsllm.proto import fed_server_pb2 as pb
from fedsllm.proto import fed_server_pb2_grpc as pb_grpc
from fedsllm.proto import telemetry_pb2, telemetry_pb2_grpc, tensor_pb2
from fedsllm.security.limits import DEFAULT_MAX_STREAMS, DEFAULT_RATE
from fedsllm.telemetry.collector import TelemetryCollector
from fedsllm.telemetry.service import TelemetryService, add_to_server
from fedsllm.trace import Tracer
from fedsllm.wire.adapters import PushHeaderInfo, push_requests
from tests.fedsllm.security.peers import CLIENT, MAIN, STRANGER_TOKEN, channel_as, code_of, serving

HASH = "scenario-hash"
SPEC = {"layer.lora_A.weight": ((2, 4), "float32"), "layer.lora_B.weight": ((4, 2), "float32")}
"""The adapter 'the model' has (fed_server/__main__.py gets it from fedsllm.roles.
client_adapter_template)."""


def adapter(value: float) -> bytes:
    return serialize_adapter(
        {k: np.full(shape, value, dtype=dtype) for k, (shape, dtype) in SPEC.items()}
    )


class Fed:
    def __init__(self, tmp_path) -> None:
        self.state = RoundState(
            num_clients=3,
            num_rounds=4,
            run_dir=tmp_path,
            tracer=Tracer(None, "fed_server"),
            template=template_from_spec(SPEC),
        )
        self.service = FedServerService(
            self.state,
            HASH,
            num_local_steps=2,
            max_adapter_bytes=256 * 2**20,
            chunk_bytes=1024,
            pull_timeout_s=3.0,
            run_dir=tmp_path,
        )
        self.collector = TelemetryCollector(tmp_path / "trace")
        self.telemetry = TelemetryService(self.collector)
        self.address = ""

    def stub(self, who, token=None) -> pb_grpc.FedServerStub:
        return pb_grpc.FedServerStub(channel_as(self.address, who, token))

    def join(self, k: int, as_id: int | None = None):
        stub = self.stub(CLIENT[k])
        request = pb.JoinRequest(
            client_id=k if as_id is None else as_id, num_samples=10, scenario_hash=HASH
        )
        return code_of(lambda: stub.Join(request, timeout=5))

    def push(self, k: int, blob: bytes, as_id: int | None = None, round_index: int = 0):
        header = PushHeaderInfo(
            client_id=k if as_id is None else as_id,
            round=round_index,
            num_samples=10,
            total_bytes=len(blob),
        )
        stub = self.stub(CLIENT[k])
        return code_of(lambda: stub.PushAdapter(push_requests(header, blob, 1024), timeout=5))


@pytest.fixture
def fed(tmp_path) -> Iterator[Fed]:
    f = Fed(tmp_path)
    register = [
        lambda s: pb_grpc.add_FedServerServicer_to_server(f.service, s),
        add_to_server(f.telemetry),
    ]
    with serving(register) as address:
        f.address = address
        yield f
    f.collector.close()


def test_poisoning_push_as_client_1_is_refused_and_the_real_client_1_is_heard(fed) -> None:
    for k in range(3):
        assert fed.join(k) is None
    before = fed.state.snapshot()
    # Client 2 (its own token) pushes "as client 1" with every LoRA B weight at 50.
    assert fed.push(2, adapter(50.0), as_id=1) == grpc.StatusCode.PERMISSION_DENIED
    assert fed.state.snapshot() == before
    # The real client 1 is accepted, not told "already reported".
    assert fed.push(1, adapter(0.1)) is None
    assert fed.state.snapshot().pending == (1,)


def test_round0_hijack_with_a_one_key_adapter_is_refused(fed) -> None:
    for k in range(3):
        assert fed.join(k) is None
    evil = serialize_adapter({"evil.weight": np.ones((1,), dtype="float32")})
    before = fed.state.snapshot()
    assert fed.push(2, evil) == grpc.StatusCode.INVALID_ARGUMENT
    assert fed.state.snapshot() == before
    # Keys come from the model: every real client is accepted and the round closes.
    for k in range(3):
        assert fed.push(k, adapter(0.1 * (k + 1))) is None
    assert fed.state.snapshot().completed_round == 0


def test_join_as_another_client_and_pull_its_global_are_refused(fed) -> None:
    assert fed.join(2, as_id=0) == grpc.StatusCode.PERMISSION_DENIED
    assert fed.state.snapshot().joined == {}
    stub = fed.stub(CLIENT[2])
    request = pb.PullGlobalRequest(client_id=0, round=0)
    assert code_of(lambda: stub.PullGlobal(request, timeout=5)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )


def test_missing_or_unknown_credentials_are_unauthenticated(fed) -> None:
    request = pb.JoinRequest(client_id=0, num_samples=10, scenario_hash=HASH)
    for token_stub in (fed.stub(None), fed.stub(None, token=STRANGER_TOKEN)):
        assert code_of(lambda s=token_stub: s.Join(request, timeout=5)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    assert fed.state.snapshot().joined == {}


def test_only_the_main_server_acts_as_the_main_server(fed, tmp_path) -> None:
    client = fed.stub(CLIENT[0])
    join = pb.MainServerJoinRequest(scenario_hash=HASH)
    assert code_of(lambda: client.JoinMainServer(join, timeout=5)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )

    def server_push():
        yield pb.PushServerAdapterRequest(
            header=pb.PushServerAdapterHeader(round=0, final=False, total_bytes=4)
        )
        yield pb.PushServerAdapterRequest(
            chunk=tensor_pb2.AdapterChunk(total_bytes=4, offset=0, data=b"evil")
        )

    assert code_of(lambda: client.PushServerAdapter(server_push(), timeout=5)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert not (tmp_path / "adapters").exists()
    assert code_of(lambda: fed.stub(MAIN).JoinMainServer(join, timeout=5)) is None
    # Telemetry pushed "as main_server" by a client.
    telemetry = telemetry_pb2_grpc.TelemetryStub(channel_as(fed.address, CLIENT[0]))
    request = telemetry_pb2.PushTelemetryRequest(
        role=telemetry_pb2.TelemetryRole.Value("TELEMETRY_ROLE_MAIN_SERVER"), source_client=-1
    )
    assert code_of(lambda: telemetry.Push(request, timeout=5)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )


def test_memory_is_allocated_as_bytes_arrive_not_as_announced(fed) -> None:
    assert fed.join(0) is None
    header = pb.PushAdapterRequest(
        header=pb.PushAdapterHeader(client_id=0, round=0, num_samples=10, total_bytes=200 * 2**20)
    )
    one_byte = pb.PushAdapterRequest(
        chunk=tensor_pb2.AdapterChunk(total_bytes=200 * 2**20, offset=0, data=b"x")
    )
    stub = fed.stub(CLIENT[0])
    tracemalloc.start()
    try:
        codes = [
            code_of(lambda: stub.PushAdapter(iter([header, one_byte]), timeout=5)) for _ in range(4)
        ]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 4  # incomplete: 1 of 200 MiB
    assert peak < 32 * 2**20, f"{peak / 2**20:.0f} MiB traced for 4 one-byte pushes"


def test_streams_per_peer_and_join_rate_are_limited(fed) -> None:
    assert fed.join(0) is None
    stub = fed.stub(CLIENT[0])
    request = pb.PullGlobalRequest(client_id=0, round=0)  # blocks: round 0 is not done
    calls = [stub.PullGlobal(request, timeout=10) for _ in range(DEFAULT_MAX_STREAMS)]
    opened = threading.Event()

    def drain(call) -> None:
        opened.set()
        try:
            for _ in call:
                pass
        except grpc.RpcError:
            pass

    threads = [threading.Thread(target=drain, args=(c,), daemon=True) for c in calls]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if fed.service.limits.snapshot().get(("PullGlobal", CLIENT[0])) == DEFAULT_MAX_STREAMS:
            break
        time.sleep(0.02)
    extra = code_of(lambda: stub.PullGlobal(request, timeout=5))
    for call in calls:
        call.cancel()
    for t in threads:
        t.join(5)
    assert extra == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The slots are given back when the handlers end (a cancelled pull's waits out
    # the server's pull timeout, 3 s here).
    deadline = time.monotonic() + 10
    while fed.service.limits.snapshot() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fed.service.limits.snapshot() == {}
    # Join at most DEFAULT_RATE times per window (client 0 joined once above).
    codes = [fed.join(0) for _ in range(DEFAULT_RATE)]
    assert codes[:-1] == [None] * (DEFAULT_RATE - 1)
    assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert fed.state.snapshot().joined == {0: 10}
