"""The Train stream grammar, without gRPC: builders and readers agree, and
messages out of place are rejected."""

from __future__ import annotations

import pytest
import torch

from fedsllm.errors import WireError
from fedsllm.proto import main_server_pb2
from fedsllm.wire.messages import (
    StepEndInfo,
    StepHeaderInfo,
    StepResultInfo,
    TrainHelloInfo,
    TrainWelcomeInfo,
)
from fedsllm.wire.tensors import Chunk, TensorSpec, frame_to_chunks, tensor_to_frame
from fedsllm.wire.train import (
    StepDownload,
    StepUpload,
    decode_train_request,
    decode_train_response,
    encode_train_request,
    encode_train_response,
    message_bytes,
    parse_train_request,
    parse_train_response,
    read_downlink,
    read_uplink,
    step_download_responses,
    step_upload_requests,
    train_request,
    train_response,
)

from ._echo import echo_specs

NAMES = ("activations", "attention_mask", "labels")
HELLO = TrainHelloInfo(client_id=1, scenario_hash="h", wire_dtype="float32")


def _frames(step: int, d: int = 16) -> list:
    gen = torch.Generator().manual_seed(step)
    return [
        tensor_to_frame("activations", torch.randn(2, 5, d, generator=gen)),
        tensor_to_frame("attention_mask", torch.ones(2, 5, dtype=torch.int64)),
        tensor_to_frame("labels", torch.randint(0, 9, (2, 5), generator=gen)),
    ]


def _header(step: int, mode: str = "train", names: tuple[str, ...] = NAMES) -> StepHeaderInfo:
    return StepHeaderInfo(round=0, step=step, mode=mode, downlink_bps=1e6, tensor_names=names)


def _uplink(num_steps: int, chunk_bytes: int = 100, wire: str = "codec") -> list:
    items: list = [HELLO]
    for step in range(num_steps):
        items += step_upload_requests(_header(step), _frames(step), chunk_bytes)
    # Through bytes, as on the wire: the project's codec, or plain protobuf.
    if wire == "codec":
        return [decode_train_request(encode_train_request(x)) for x in items]
    return [
        main_server_pb2.TrainRequest.FromString(train_request(x).SerializeToString()) for x in items
    ]


@pytest.mark.parametrize("wire", ["codec", "protobuf"])
def test_uplink_round_trip_several_steps(wire: str) -> None:
    items = list(read_uplink(_uplink(3, wire=wire), echo_specs))
    assert items[0] == HELLO
    steps = items[1:]
    assert [s.header.step for s in steps] == [0, 1, 2]
    for i, s in enumerate(steps):
        assert isinstance(s, StepUpload)
        assert s.header == _header(i)
        assert s.receive_s >= 0
        want = _frames(i)
        assert torch.equal(
            s.tensor("activations"),
            torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(i)),
        )
        assert bytes(s.frames["labels"].data) == bytes(want[2].data)


def test_downlink_round_trip_train_and_eval() -> None:
    grad = tensor_to_frame("activations_grad", torch.randn(2, 5, 16))
    train = StepResultInfo(
        round=0,
        step=0,
        loss=2.5,
        num_tokens=10,
        server_compute_s=0.01,
        tensor_names=("activations_grad",),
    )
    evals = StepResultInfo(round=0, step=1, loss=2.0, num_tokens=10, server_compute_s=0.01)
    msgs = [TrainWelcomeInfo(client_id=1, scenario_hash="h", max_tensor_bytes=99)]
    msgs += step_download_responses(train, [grad], 64)
    msgs += step_download_responses(evals, [], 64)
    received = [decode_train_response(encode_train_response(m)) for m in msgs]
    spec = TensorSpec("activations_grad", frozenset({"float32"}), (2, 5, 16))
    items = list(read_downlink(received, lambda r: [spec]))
    assert isinstance(items[0], TrainWelcomeInfo) and items[0].max_tensor_bytes == 99
    assert isinstance(items[1], StepDownload) and items[1].result == train
    assert bytes(items[1].frames["activations_grad"].data) == bytes(grad.data)
    assert items[2].result == evals and items[2].frames == {}


def test_envelopes_round_trip_each_kind() -> None:
    chunk = next(frame_to_chunks(_frames(0)[0], 10**6))
    for item in (HELLO, _header(0), StepEndInfo(), chunk):
        assert parse_train_request(train_request(item)) == item
    welcome = TrainWelcomeInfo(client_id=1, scenario_hash="h", max_tensor_bytes=1)
    result = StepResultInfo(round=1, step=2, loss=0.5, num_tokens=3, server_compute_s=0.1)
    for item in (welcome, result, chunk):
        assert parse_train_response(train_response(item)) == item
    with pytest.raises(WireError, match="no field of the oneof"):
        parse_train_request(main_server_pb2.TrainRequest())
    with pytest.raises(TypeError):
        train_request(result)  # type: ignore[arg-type]


def test_message_bytes_counts_payload() -> None:
    chunk = next(frame_to_chunks(_frames(0)[0], 10**6))
    size = message_bytes(train_request(chunk))
    assert 2 * 5 * 16 * 4 < size < 2 * 5 * 16 * 4 + 100
    # The size a shaper charges for a chunk item is what goes on the wire.
    assert message_bytes(chunk) == size == len(encode_train_request(chunk))
    for item in (HELLO, _header(0), StepEndInfo()):
        assert message_bytes(item) == len(encode_train_request(item))


@pytest.mark.parametrize("chunk_bytes", [1, 7, 100, 10**6])
def test_codec_writes_the_protobuf_bytes(chunk_bytes: int) -> None:
    """A peer with the generated stubs reads what the codec writes, and the
    reverse: the bytes are identical to protobuf's."""
    for frame in _frames(0):
        for chunk in frame_to_chunks(frame, chunk_bytes):
            wire = encode_train_request(chunk)
            assert wire == train_request(chunk).SerializeToString()
            assert encode_train_response(chunk) == train_response(chunk).SerializeToString()
            assert decode_train_request(wire) == chunk
            assert parse_train_request(main_server_pb2.TrainRequest.FromString(wire)) == chunk
    for item in (HELLO, _header(0), StepEndInfo()):
        assert encode_train_request(item) == train_request(item).SerializeToString()
        assert parse_train_request(decode_train_request(encode_train_request(item))) == item


def test_decoded_chunk_is_a_view_of_the_received_bytes() -> None:
    """No copy between gRPC's message bytes and the assembler."""
    chunk = next(frame_to_chunks(_frames(0)[0], 64))
    wire = encode_train_request(chunk)
    decoded = decode_train_request(wire)
    assert isinstance(decoded, Chunk)
    assert isinstance(decoded.data, memoryview) and decoded.data.obj is wire
    assert bytes(decoded.data) == bytes(chunk.data)


def test_builder_rejects_frames_not_matching_header() -> None:
    with pytest.raises(WireError, match="StepHeader.tensor_names"):
        list(step_upload_requests(_header(0), list(reversed(_frames(0))), 100))


def _req(item: object) -> main_server_pb2.TrainRequest:
    return train_request(item)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("msgs", "needle"),
    [
        ([_req(_header(0))], "first message must be hello, got header"),
        ([_req(HELLO), _req(HELLO)], "hello sent twice"),
        ([_req(HELLO), _req(StepEndInfo())], "end without a step header"),
        (
            [_req(HELLO), _req(_header(0)), _req(_header(1))],
            "header of step 1 before the end of step 0",
        ),
        (
            [_req(HELLO), *[_req(c) for c in frame_to_chunks(_frames(0)[1], 100)]],
            "chunk of 'attention_mask' outside a step",
        ),
        (
            [_req(HELLO), _req(_header(0)), *[_req(c) for c in frame_to_chunks(_frames(0)[0], 99)]],
            "stream ended inside step 0",
        ),
        (
            [_req(HELLO), _req(_header(0, names=("activations", "weights")))],
            "unexpected tensor(s) ['weights']",
        ),
        (
            [
                _req(HELLO),
                _req(_header(0, names=("activations",))),
                *[_req(c) for c in frame_to_chunks(_frames(0)[2], 100)],
            ],
            "unexpected tensor 'labels'",
        ),
        (
            [
                _req(HELLO),
                _req(_header(0)),
                *[_req(c) for c in frame_to_chunks(_frames(0)[0], 99)],
                _req(StepEndInfo()),
            ],
            "['attention_mask', 'labels'] never arrived",
        ),
    ],
)
def test_uplink_rejects(msgs: list, needle: str) -> None:
    with pytest.raises(WireError) as info:
        list(read_uplink(msgs, echo_specs))
    assert needle in str(info.value)


def test_uplink_shape_mismatch_names_field_and_values() -> None:
    frames = _frames(0)
    frames[1] = tensor_to_frame("attention_mask", torch.ones(2, 4, dtype=torch.int64))
    msgs = [_req(HELLO), *step_upload_requests(_header(0), frames, 100)]
    with pytest.raises(WireError) as info:
        list(read_uplink(msgs, echo_specs))
    assert info.value.field == "attention_mask.shape[1]"
    assert "=4, expected T=5 (from activations.shape[1])" in str(info.value)


def test_downlink_rejects_out_of_place() -> None:
    welcome = train_response(TrainWelcomeInfo(client_id=1, scenario_hash="h", max_tensor_bytes=1))
    result = StepResultInfo(
        round=0,
        step=0,
        loss=1.0,
        num_tokens=1,
        server_compute_s=0.0,
        tensor_names=("activations_grad",),
    )
    spec = [TensorSpec("activations_grad", frozenset({"float32"}))]
    with pytest.raises(WireError, match="first message must be welcome"):
        list(read_downlink([train_response(result)], lambda r: spec))
    with pytest.raises(WireError, match="result of step 0 before the tensors of step 0"):
        list(
            read_downlink([welcome, train_response(result), train_response(result)], lambda r: spec)
        )
    with pytest.raises(WireError, match="stream ended inside the reply to step 0"):
        list(read_downlink([welcome, train_response(result)], lambda r: spec))
