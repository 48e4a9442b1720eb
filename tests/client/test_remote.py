"""The client's gRPC side. The allocation follower against a real controller: pushes
are applied and recorded, and a failure in applying one ends the wait at once
with the cause instead of a long timeout. The pull of the global adapter returns
when the fed server starts answering (the wait) and reads the rest on demand (the
transfer). A training step's reply says the downlink rate the main server paced it at."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import torch

from client.remote import AllocationFollower, MainServerStream
from fed_server.controller import Controller
from fed_server.controller_service import ControllerService
from fedsllm.config import load_scenario
from fedsllm.proto import controller_pb2_grpc, main_server_pb2_grpc
from fedsllm.roles import register_info
from fedsllm.trace import Tracer
from fedsllm.wire.messages import StepResultInfo, TrainWelcomeInfo, step_header_from_proto
from fedsllm.wire.rpc import create_server, make_channel, stop_server
from fedsllm.wire.train import ReceivedPart, parse_train_request
from tests.loopback import main_server_address


@pytest.fixture
def controller() -> Iterator[tuple[str, Controller]]:
    scenario = load_scenario(overrides=["policy.name='equal'", "clients.num_clients=2"])
    ctl = Controller(scenario)
    ctl.start_round(0)
    service = ControllerService(ctl, poll_s=0.05)
    server, port = create_server(
        "127.0.0.1:0",
        [lambda s: controller_pb2_grpc.add_ControllerServicer_to_server(service, s)],
        allow_unauthenticated=True,
    )
    try:
        yield f"127.0.0.1:{port}", ctl
    finally:
        ctl.close()
        stop_server(server, grace_s=0.5)


def test_follower_applies_pushes(controller) -> None:
    address, ctl = controller
    applied = []
    scenario = ctl.scenario
    with make_channel(address) as channel:
        follower = AllocationFollower(
            channel,
            register_info(scenario, 1, 100),
            applied.append,
            Tracer(None, "client", client_id=1),
            wait_timeout_s=10,
        )
        assert follower.local_steps(0) == ctl.plan.num_local_steps
        ctl.start_round(1)
        assert follower.local_steps(1) == ctl.plan.num_local_steps
        follower.close()
    assert [a.round for a in applied][-1] == 1
    assert all(a.client_id == 1 for a in applied)
    assert applied[-1].uplink_bps == ctl.current(1).uplink_bps


def test_failure_to_apply_ends_the_wait_with_the_cause(controller) -> None:
    address, ctl = controller

    def refuse(_info) -> None:
        raise ValueError("shaper refused the rate")

    with make_channel(address) as channel:
        follower = AllocationFollower(
            channel,
            register_info(ctl.scenario, 0, 100),
            refuse,
            Tracer(None, "client", client_id=0),
            wait_timeout_s=60,
        )
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="shaper refused the rate"):
            follower.local_steps(0)
        assert time.monotonic() - t0 < 30  # not the 60 s timeout
        follower.close()


class _CountingStub:
    """A fed server stub whose PullGlobal stream counts the messages taken from it."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.num_taken = 0
        self.requests: list[object] = []

    def PullGlobal(self, request, timeout):
        from fedsllm.wire.adapters import GlobalHeaderInfo, pull_responses

        self.requests.append(request)
        header = GlobalHeaderInfo(round=request.round, has_adapter=True, total_bytes=len(self.blob))
        for message in pull_responses(header, self.blob, 4096):
            self.num_taken += 1
            yield message


def test_pull_global_returns_once_the_fed_server_answers() -> None:
    from client.remote import FedServerClient

    blob = bytes(range(256)) * 40  # three 4 KiB chunks
    with make_channel("127.0.0.1:1") as channel:  # never dialled: the stub is replaced
        fed = FedServerClient(channel, 0, "h", 4096)
        fed.stub = stub = _CountingStub(blob)
        pull = fed.pull_global(2)
        assert stub.num_taken == 1  # the header ended the wait; the chunks are the transfer
        assert pull.read() == (2, blob)
        assert stub.num_taken == 4
        assert fed.pull_global(-1).read() == (-1, None)  # before round 0: no call
        assert len(stub.requests) == 1


@pytest.mark.parametrize("asked_bps", [0.0, 2e6])
def test_reply_says_the_downlink_rate_the_server_paced_at(asked_bps) -> None:
    from fedsllm.roles import build_part
    from main_server.compute import ServerTrainer
    from main_server.service import MainServerService
    from main_server.step_checks import StepLimits

    scenario = load_scenario(overrides=["model.pretrain_steps=0", "data.seq_len=8"])
    part, tokenizer, cfg = build_part(scenario, "server")
    limits = StepLimits(
        hidden_size=cfg.hidden_size,
        vocab_size=tokenizer.vocab_size,
        max_seq_len=8,
        max_batch=2,
        wire_dtype="float32",
        num_clients=1,
        max_tensor_bytes=2**20,
    )
    paced: list[float] = []
    service = MainServerService(
        ServerTrainer(part, lr=1e-2),
        limits,
        "h",
        Tracer(None, "main_server"),
        chunk_bytes=4096,
        pace=lambda _client, rate_bps, _nbytes, _new: paced.append(rate_bps),
    )
    g = torch.Generator().manual_seed(0)
    with main_server_address(service) as address:
        stream = MainServerStream(address, 0, "h", "float32", 4096, downlink_bps=lambda: asked_bps)
        hidden = torch.randn(2, 8, cfg.hidden_size, generator=g)
        labels = torch.randint(3, 200, (2, 8), generator=g)
        stream.send_step(0, 0, True, hidden, torch.ones(2, 8, dtype=torch.int64), labels)
        reply, _ = stream.receive_reply(0, 0)
        stream.close()
    assert paced and set(paced) == {asked_bps}  # every gradient chunk, at that rate
    assert reply.downlink_bps == asked_bps


class _RecordingMainServer(main_server_pb2_grpc.MainServerServicer):
    """A Train servicer that welcomes the client, keeps the parts of its first
    step as the Train deserializer hands them over, and ends the call."""

    def __init__(self) -> None:
        self.parts: list[ReceivedPart] = []
        self.done = threading.Event()

    def Train(self, request_iterator, context):  # noqa: N802 - generated name
        hello = parse_train_request(next(request_iterator))
        yield TrainWelcomeInfo(
            client_id=hello.client_id, scenario_hash=hello.scenario_hash, max_tensor_bytes=2**20
        )
        for part in request_iterator:
            self.parts.append(part)
            if part.end:
                break
        self.done.set()


def _send_one_step(
    train: bool = True, pace_up: Callable[[int, bool], None] | None = None
) -> tuple[_RecordingMainServer, int]:
    """One step of 32 KiB activations (eight 4 KiB chunks), mask and labels sent
    by a MainServerStream to a _RecordingMainServer: the recorder, and the
    bytes send_step says it sent."""
    recorder = _RecordingMainServer()
    with main_server_address(recorder) as address:
        stream = MainServerStream(address, 0, "h", "float32", 4096, pace_up=pace_up)
        hidden = torch.randn(2, 8, 512)
        mask = torch.ones(2, 8, dtype=torch.int64)
        labels = torch.arange(16).reshape(2, 8)
        sent = stream.send_step(0, 0, train, hidden, mask, labels)
        assert recorder.done.wait(10)
        stream.close()
    return recorder, sent


def test_a_step_sends_the_small_tensors_with_its_first_message() -> None:
    """The mask and labels ride whole on the step's first message, with the
    header and the first activation chunk, so the main server takes them in
    while the activations are still arriving, and the step's last message
    holds activations only (issue 13: what the server does after the last
    message is on the step's critical path)."""
    recorder, _ = _send_one_step()
    laid = [
        [(key[0], offset, b - a) for key, offset, a, b in p.layout.chunks] for p in recorder.parts
    ]
    header = step_header_from_proto(recorder.parts[0].head)
    assert header.tensor_names == ("attention_mask", "labels", "activations")
    assert laid[0] == [("attention_mask", 0, 128), ("labels", 0, 128), ("activations", 0, 4096)]
    assert laid[1:] == [[("activations", i * 4096, 4096)] for i in range(1, 8)]


@pytest.mark.parametrize(("paced", "train"), [(False, True), (True, True), (True, False)])
def test_upload_counts_and_paces_every_message(paced: bool, train: bool) -> None:
    """send_step returns the bytes of the messages the server received, batched
    or not. A paced training step calls pace_up once per message, before it,
    with its size (new_message on the first only); an evaluation step, and an
    unshaped link, is not paced."""
    calls: list[tuple[int, bool]] = []
    pace_up = (lambda n, new: calls.append((n, new))) if paced else None
    recorder, sent = _send_one_step(train, pace_up)
    sizes = [len(p.buf) for p in recorder.parts]
    assert len(sizes) == 8 and sent == sum(sizes)
    if paced and train:
        assert calls == [(n, i == 0) for i, n in enumerate(sizes)]
    else:
        assert calls == []


class _ReplyingMainServer(_RecordingMainServer):
    """_RecordingMainServer that answers each evaluation step with its result."""

    def Train(self, request_iterator, context):  # noqa: N802 - generated name
        hello = parse_train_request(next(request_iterator))
        yield TrainWelcomeInfo(
            client_id=hello.client_id, scenario_hash=hello.scenario_hash, max_tensor_bytes=2**22
        )
        step = 0
        for part in request_iterator:
            self.parts.append(part)
            if part.end:
                yield StepResultInfo(
                    round=0,
                    step=step,
                    loss=0.0,
                    num_tokens=0,
                    server_compute_s=0.0,
                    tensor_names=(),
                )
                step += 1


def test_a_step_is_encoded_and_its_reply_read_on_the_callers_thread(monkeypatch) -> None:
    """The Train stream runs on grpc.aio, on a loop the caller's own thread
    runs (fedsllm.wire.train_client): every message of a step is encoded as
    it is written, on that thread, and its reply is read there too. The sync
    client encoded each on gRPC's sending thread, and handed it over there
    and the reply back with the GIL: what issue 13 measured aio to save.
    Recorded: the thread of each StepPart's encoding (its pieces; the server
    in this process encodes ReplyParts) and of each reply's assembly."""
    from fedsllm.wire import train as train_module

    encoded: list[int] = []
    fed: list[int] = []
    pieces = train_module.StepPart.pieces
    feed = train_module.DownlinkReader.feed

    def spy_pieces(self):  # type: ignore[no-untyped-def]
        encoded.append(threading.get_ident())
        return pieces(self)

    def spy_feed(self, msg):  # type: ignore[no-untyped-def]
        fed.append(threading.get_ident())
        return feed(self, msg)

    monkeypatch.setattr(train_module.StepPart, "pieces", spy_pieces)
    monkeypatch.setattr(train_module.DownlinkReader, "feed", spy_feed)
    with main_server_address(_ReplyingMainServer()) as address:
        stream = MainServerStream(address, 0, "h", "float32", 4096)
        try:
            hidden = torch.randn(2, 8, 4096)  # 64 messages of 4 KiB
            labels = torch.zeros(2, 8, dtype=torch.int64)
            for step in range(2):
                sent = stream.send_step(
                    0, step, False, hidden, torch.ones(2, 8, dtype=torch.int64), labels
                )
                stream.receive_reply(0, step)  # raises unless it answers this step
                assert sent > hidden.numel() * 4
        finally:
            stream.close()
    # At least once per message (message_bytes sizes each from its pieces too).
    assert len(encoded) >= 2 * 64 and set(encoded) == {threading.get_ident()}
    assert len(fed) == 1 + 2 and set(fed) == {threading.get_ident()}  # welcome, 2 results
