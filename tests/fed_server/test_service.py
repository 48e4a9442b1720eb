"""FedServer through a real gRPC server on port 0: good calls work, bad ones are
refused with the right status and change nothing."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from fed_server.aggregate import parse_adapter, serialize_adapter
from fed_server.rounds import RoundState
from fed_server.service import FedServerService
from fedsllm.proto import fed_server_pb2 as pb
from fedsllm.proto import fed_server_pb2_grpc as pb_grpc
from fedsllm.proto import tensor_pb2
from fedsllm.trace import Tracer
from fedsllm.wire.adapters import PushHeaderInfo, push_requests, read_pull
from tests.loopback import serving

HASH = "abc123"


@pytest.fixture
def fed(tmp_path) -> Iterator[tuple[pb_grpc.FedServerStub, RoundState]]:
    state = RoundState(
        num_clients=2, num_rounds=2, run_dir=tmp_path, tracer=Tracer(None, "fed_server")
    )
    service = FedServerService(
        state, HASH, num_local_steps=3, max_adapter_bytes=4096, chunk_bytes=64, pull_timeout_s=2.0
    )
    with serving(lambda s: pb_grpc.add_FedServerServicer_to_server(service, s)) as channel:
        yield pb_grpc.FedServerStub(channel), state


def _blob(value: float) -> bytes:
    return serialize_adapter({"w": np.full((4, 4), value, dtype="float32")})


def _push(stub, client_id: int, round_index: int, blob: bytes, num_samples: int = 10):
    header = PushHeaderInfo(
        client_id=client_id, round=round_index, num_samples=num_samples, total_bytes=len(blob)
    )
    return stub.PushAdapter(push_requests(header, blob, 64), timeout=5)


def _join(stub, client_id: int, num_samples: int = 10, scenario_hash: str = HASH):
    return stub.Join(
        pb.JoinRequest(client_id=client_id, num_samples=num_samples, scenario_hash=scenario_hash),
        timeout=5,
    )


def test_full_round_over_grpc(fed) -> None:
    stub, _state = fed
    reply = _join(stub, 0)
    assert (reply.current_round, reply.num_rounds, reply.num_local_steps) == (0, 2, 3)
    _join(stub, 1, num_samples=30)
    assert _push(stub, 0, 0, _blob(1.0)).num_received == 1
    _push(stub, 1, 0, _blob(5.0), num_samples=30)
    header, blob = read_pull(stub.PullGlobal(pb.PullGlobalRequest(client_id=0, round=0), timeout=5))
    assert header.has_adapter and header.round == 0
    np.testing.assert_allclose(parse_adapter(blob)["w"], 4.0)
    status = stub.Status(pb.StatusRequest(), timeout=5)
    assert status.round == 1 and list(status.clients_joined) == [0, 1]


def _garbage_requests() -> Iterator[pb.PushAdapterRequest]:
    yield pb.PushAdapterRequest(
        header=pb.PushAdapterHeader(client_id=0, round=0, num_samples=10, total_bytes=8)
    )
    yield pb.PushAdapterRequest(
        chunk=tensor_pb2.AdapterChunk(total_bytes=8, offset=0, data=b"garbage!")
    )


def _gap_requests() -> Iterator[pb.PushAdapterRequest]:
    blob = _blob(1.0)
    yield pb.PushAdapterRequest(
        header=pb.PushAdapterHeader(client_id=0, round=0, num_samples=10, total_bytes=len(blob))
    )
    yield pb.PushAdapterRequest(
        chunk=tensor_pb2.AdapterChunk(total_bytes=len(blob), offset=64, data=blob[64:128])
    )


def _oversize_requests() -> Iterator[pb.PushAdapterRequest]:
    yield pb.PushAdapterRequest(
        header=pb.PushAdapterHeader(client_id=0, round=0, num_samples=10, total_bytes=10**6)
    )


@pytest.mark.parametrize(
    ("send", "code", "match"),
    [
        (
            lambda s: s.PushAdapter(_garbage_requests(), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "safetensors",
        ),
        (
            lambda s: s.PushAdapter(_gap_requests(), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "offset",
        ),
        (
            lambda s: s.PushAdapter(_oversize_requests(), timeout=5),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "total_bytes",
        ),
        (
            lambda s: _push(s, 0, 1, _blob(1.0)),
            grpc.StatusCode.OUT_OF_RANGE,
            "not open yet",
        ),
        (
            lambda s: _push(s, 1, 0, _blob(1.0)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "has not joined",
        ),
        (lambda s: _push(s, 9, 0, _blob(1.0)), grpc.StatusCode.INVALID_ARGUMENT, "client_id"),
        (
            lambda s: _push(s, 0, 0, serialize_adapter({"w": np.full((4, 4), np.nan, "float32")})),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN",
        ),
        (
            lambda s: _join(s, 1, scenario_hash="other"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "scenario_hash",
        ),
        (
            lambda s: s.PullGlobal(pb.PullGlobalRequest(client_id=0, round=5), timeout=5).next(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "round",
        ),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(fed, send, code, match) -> None:
    stub, state = fed
    _join(stub, 0)
    before = state.snapshot()
    with pytest.raises(grpc.RpcError) as info:
        send(stub)
    assert info.value.code() == code
    assert match in info.value.details()
    assert state.snapshot() == before
    # The server still works after refusing.
    assert _push(stub, 0, 0, _blob(1.0)).accepted


def test_pull_global_is_paced_per_client(tmp_path) -> None:
    """Every message of the global adapter goes through the downlink pacer of the
    client that asked, the first one marked as a new message."""
    state = RoundState(
        num_clients=1, num_rounds=1, run_dir=tmp_path, tracer=Tracer(None, "fed_server")
    )
    paced: list[tuple[int, int, bool]] = []
    service = FedServerService(
        state,
        HASH,
        num_local_steps=1,
        max_adapter_bytes=4096,
        chunk_bytes=64,
        pace_down=lambda k, n, first: paced.append((k, n, first)),
    )
    with serving(lambda s: pb_grpc.add_FedServerServicer_to_server(service, s)) as channel:
        stub = pb_grpc.FedServerStub(channel)
        _join(stub, 0)
        _push(stub, 0, 0, _blob(2.0))
        responses = list(stub.PullGlobal(pb.PullGlobalRequest(client_id=0, round=0), timeout=5))
    assert len(paced) == len(responses) > 2
    assert [p[0] for p in paced] == [0] * len(paced)
    assert [p[2] for p in paced] == [True] + [False] * (len(paced) - 1)
    assert [p[1] for p in paced] == [r.ByteSize() for r in responses]


def test_pull_global_refuses_an_unknown_client(fed) -> None:
    stub, state = fed
    _join(stub, 0)
    before = state.snapshot()
    with pytest.raises(grpc.RpcError) as info:
        list(stub.PullGlobal(pb.PullGlobalRequest(client_id=9, round=0), timeout=5))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "client_id" in info.value.details()
    assert state.snapshot() == before
