"""Roles that share nothing but gRPC: the run info a role starts from, the base
hash checked at Join, and the main server's adapter kept by the fed server.
Every test talks to a real server on port 0."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fed_server.rounds import RoundState
from fed_server.runinfo import RunInfoService
from fed_server.service import FedServerService
from fedsllm.bootstrap import (
    SettingError,
    fetch_base,
    get_run_info,
    server_adapter_requests,
)
from fedsllm.config import default_scenario_path, load_scenario
from fedsllm.errors import WireError
from fedsllm.launch import scenario_hash, write_scenario
from fedsllm.proto import fed_server_pb2 as pb
from fedsllm.proto import fed_server_pb2_grpc as pb_grpc
from fedsllm.trace import Tracer
from fedsllm.wire.rpc import create_server, make_channel, stop_server

BASE = "base0123456789"


@pytest.fixture
def scenario():
    return load_scenario(default_scenario_path())


def _serve(tmp_path: Path, scenario, base_hash: str, base_file: Path | None = None):
    state = RoundState(
        num_clients=2, num_rounds=2, run_dir=tmp_path, tracer=Tracer(None, "fed_server")
    )
    fed = FedServerService(
        state,
        scenario_hash(scenario),
        num_local_steps=1,
        max_adapter_bytes=4096,
        chunk_bytes=64,
        base_hash=base_hash,
        run_dir=tmp_path,
    )
    info = RunInfoService(
        scenario.to_dict(), scenario_hash(scenario), base_hash, base_file, chunk_bytes=100
    )
    server, port = create_server(
        "127.0.0.1:0",
        [
            lambda s: pb_grpc.add_FedServerServicer_to_server(fed, s),
            lambda s: pb_grpc.add_RunInfoServicer_to_server(info, s),
        ],
        allow_unauthenticated=True,
    )
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def fed(tmp_path, scenario) -> Iterator[tuple[str, Path]]:
    base_file = tmp_path / "served" / "base.safetensors"
    base_file.parent.mkdir()
    base_file.write_bytes(bytes(range(256)) * 5)
    server, address = _serve(tmp_path, scenario, BASE, base_file)
    try:
        yield address, base_file
    finally:
        stop_server(server, grace_s=0)


def _join(address: str, scenario, base_hash: str, client_id: int = 0) -> pb.JoinResponse:
    with make_channel(address) as channel:
        return pb_grpc.FedServerStub(channel).Join(
            pb.JoinRequest(
                client_id=client_id,
                num_samples=10,
                scenario_hash=scenario_hash(scenario),
                base_hash=base_hash,
            ),
            timeout=5,
        )


def test_base_hash_mismatch_is_refused_at_join(fed, scenario) -> None:
    address, _ = fed
    with pytest.raises(grpc.RpcError) as err:
        _join(address, scenario, "another-base")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "base_hash 'another-base' of client 0" in err.value.details()
    assert BASE in err.value.details()
    assert _join(address, scenario, BASE).num_rounds == 2


def test_main_server_join_refuses_a_mismatched_base(fed, scenario) -> None:
    from main_server.__main__ import join_main_server

    address, _ = fed
    with make_channel(address) as channel:
        with pytest.raises(SettingError, match="^base_hash: refused at Join: .*the main server"):
            join_main_server(channel, scenario_hash(scenario), "another-base")
        with pytest.raises(SettingError, match="^scenario_hash: refused at Join"):
            join_main_server(channel, "not-the-scenario", BASE)
        assert join_main_server(channel, scenario_hash(scenario), BASE) == 2


def test_a_base_every_role_builds_takes_the_first_peers_hash(tmp_path, scenario) -> None:
    server, address = _serve(tmp_path, scenario, base_hash="")
    try:
        with make_channel(address) as channel:
            stub = pb_grpc.FedServerStub(channel)
            stub.JoinMainServer(
                pb.MainServerJoinRequest(scenario_hash=scenario_hash(scenario), base_hash="first"),
                timeout=5,
            )
        with pytest.raises(grpc.RpcError, match="base_hash 'second' of client 1"):
            _join(address, scenario, "second", client_id=1)
        _join(address, scenario, "first", client_id=1)
    finally:
        stop_server(server, grace_s=0)


def test_run_info_and_base_fetch(fed, scenario, tmp_path) -> None:
    address, base_file = fed
    with make_channel(address) as channel:
        info = get_run_info(channel)
        assert info.scenario == scenario
        assert info.scenario_hash == scenario_hash(scenario)
        assert (info.base_hash, info.base_bytes) == (BASE, base_file.stat().st_size)
        work = tmp_path / "client_work"
        path = fetch_base(channel, work, BASE)
    assert path == work / "base" / f"{BASE}.safetensors"
    assert path.read_bytes() == base_file.read_bytes()
    # A fetch announcing another hash is refused before anything is written.
    with (
        make_channel(address) as channel,
        pytest.raises(WireError, match="FetchBaseHeader.base_hash"),
    ):
        fetch_base(channel, tmp_path / "other", "not-this-one")
    assert not (tmp_path / "other" / "base" / "not-this-one.safetensors").exists()


def test_server_adapter_arrives_at_checkpoints_and_at_the_end(fed, tmp_path) -> None:
    address, _ = fed
    with make_channel(address) as channel:
        stub = pb_grpc.FedServerStub(channel)
        stub.PushServerAdapter(server_adapter_requests(0, False, b"round0" * 30, 64), timeout=5)
        stub.PushServerAdapter(server_adapter_requests(1, True, b"final!" * 30, 64), timeout=5)
    adapters = tmp_path / "adapters"
    assert (adapters / "server_round0.safetensors").read_bytes() == b"round0" * 30
    assert (adapters / "server.safetensors").read_bytes() == b"final!" * 30
    assert not (adapters / "server_round1.safetensors").exists()


def _role_args(scenario_file: Path | None) -> argparse.Namespace:
    return argparse.Namespace(scenario_json=str(scenario_file) if scenario_file else None)


def test_a_local_scenario_must_match_the_fed_servers(fed, scenario, tmp_path, monkeypatch) -> None:
    from fedsllm.roles import role_start

    monkeypatch.delenv("FEDSLLM_SCENARIO", raising=False)
    address, _ = fed
    same = write_scenario(tmp_path, scenario)
    got, got_hash, _ = role_start(_role_args(same), address, tmp_path, None)
    assert (got, got_hash) == (scenario, scenario_hash(scenario))

    other_dir = tmp_path / "other"
    other_dir.mkdir()
    doc = json.loads(same.read_text())
    doc["seed"] = 7
    doc.pop("scenario_hash")
    other = other_dir / "scenario.json"
    other.write_text(json.dumps({"scenario_hash": "whatever", **doc}))
    with pytest.raises(SettingError) as err:
        role_start(_role_args(other), address, tmp_path, None)
    message = str(err.value)
    assert message.startswith("--scenario: scenario hash mismatch")
    assert scenario_hash(scenario) in message
    # The variable is named when the file came from it.
    monkeypatch.setenv("FEDSLLM_SCENARIO", str(other))
    with pytest.raises(SettingError, match="^FEDSLLM_SCENARIO: scenario hash mismatch"):
        role_start(_role_args(None), address, tmp_path, None)


class _CutOnce(RunInfoService):
    """A fed server too busy at first: its first FetchBase ends with UNAVAILABLE
    after the header and one chunk; the next ones stream the whole base."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fetches = 0

    def FetchBase(self, request, context):
        self.fetches += 1
        stream = super().FetchBase(request, context)
        if self.fetches > 1:
            yield from stream
            return
        yield next(stream)  # the header
        yield next(stream)  # one chunk
        context.abort(grpc.StatusCode.UNAVAILABLE, "too busy: try again")


def _fast_retry(heard: list[str]):
    from fedsllm.wire.rpc import RetryPolicy

    return RetryPolicy(
        seed=0, budget_s=None, base_s=0.01, cap_s=0.1, on_retry=lambda call, _: heard.append(call)
    )


def test_a_base_download_cut_off_starts_again_and_arrives_whole(scenario, tmp_path) -> None:
    base_file = tmp_path / "served.safetensors"
    base_file.write_bytes(bytes(range(256)) * 5)
    info = _CutOnce(scenario.to_dict(), scenario_hash(scenario), BASE, base_file, chunk_bytes=100)
    server, port = create_server(
        "127.0.0.1:0",
        [lambda s: pb_grpc.add_RunInfoServicer_to_server(info, s)],
        allow_unauthenticated=True,
    )
    heard: list[str] = []
    try:
        with make_channel(f"127.0.0.1:{port}") as channel:
            path = fetch_base(channel, tmp_path / "work", BASE, retry=_fast_retry(heard))
    finally:
        stop_server(server, grace_s=0)
    assert path.read_bytes() == base_file.read_bytes()  # not the first chunk twice
    assert info.fetches == 2 and heard == ["FetchBase"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left


@pytest.mark.parametrize("call", ["GetScenario", "FetchBase"])
def test_run_info_and_base_wait_for_a_fed_server_not_up_yet(scenario, tmp_path, call) -> None:
    """As a client started before its fed server (or one it cannot reach yet):
    the start-up calls are retried on UNAVAILABLE like every client call."""
    from fedsllm.wire.rpc import RetryPolicy, free_port

    base_file = tmp_path / "served.safetensors"
    base_file.write_bytes(b"base" * 100)
    info = RunInfoService(
        scenario.to_dict(), scenario_hash(scenario), BASE, base_file, chunk_bytes=64
    )
    address = f"127.0.0.1:{free_port()}"
    servers: list[grpc.Server] = []

    def start_on_first_wait(seconds: float) -> None:
        if not servers:  # the first try found nothing listening
            servers.append(
                create_server(
                    address,
                    [lambda s: pb_grpc.add_RunInfoServicer_to_server(info, s)],
                    allow_unauthenticated=True,
                )[0]
            )
        time.sleep(seconds)

    heard: list[str] = []
    retry = RetryPolicy(
        seed=0,
        budget_s=None,
        base_s=0.05,
        cap_s=0.2,
        sleep=start_on_first_wait,
        on_retry=lambda name, _: heard.append(name),
    )
    try:
        with make_channel(address) as channel:
            if call == "FetchBase":
                path = fetch_base(channel, tmp_path / "work", BASE, retry=retry)
                assert path.read_bytes() == b"base" * 100
            else:
                assert get_run_info(channel, retry=retry).scenario == scenario
    finally:
        for server in servers:
            stop_server(server, grace_s=0)
    assert servers and heard[0] == call


def test_a_malformed_base_stream_is_not_retried(fed, tmp_path) -> None:
    address, _ = fed
    heard: list[str] = []
    with (
        make_channel(address) as channel,
        pytest.raises(WireError, match="FetchBaseHeader.base_hash"),
    ):
        fetch_base(channel, tmp_path / "other", "not-this-one", retry=_fast_retry(heard))
    assert heard == []
