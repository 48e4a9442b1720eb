"""The step header and result written and read by hand (fedsllm.wire.heads):
the bytes are protobuf's for every value, reading gives what protobuf's
parse gives (or raises what it raises) for any bytes, and a step's head
crosses the Train codec without protobuf."""

from __future__ import annotations

import dataclasses
import math
import random
import struct
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf.message import DecodeError

from fedsllm.errors import WireError
from fedsllm.proto import main_server_pb2
from fedsllm.wire import heads
from fedsllm.wire.codec import chunk_header, varint
from fedsllm.wire.heads import (
    HeaderFields,
    ResultFields,
    parse_step_header,
    parse_step_result,
    serialize_step_header,
    serialize_step_result,
)
from fedsllm.wire.messages import (
    STEP_MODE_NUMBERS,
    STEP_MODES,
    StepHeaderInfo,
    StepResultInfo,
    step_header_from_proto,
    step_header_to_proto,
    step_result_from_proto,
    step_result_to_proto,
)
from fedsllm.wire.tensors import tensor_to_frame
from fedsllm.wire.train import (
    ReceivedPart,
    ReceivedResult,
    decode_train_request,
    decode_train_response,
    encode_train_request,
    encode_train_response,
    parse_train_request,
    parse_train_response,
    step_download_responses,
    step_upload_requests,
    train_response,
)

UINTS = (0, 1, 127, 128, 300, 2**31, 2**32 - 1)
DOUBLES = (0.0, -0.0, 1.5, -2.25, 1e-300, 5e-324, 1.7e9, math.inf, -math.inf, math.nan, 7)
NAMES = (
    (),
    ("activations",),
    ("attention_mask", "labels", "activations"),
    ("é", "激活"),
    ("x" * 200,),
)


@dataclasses.dataclass(frozen=True)
class Head:
    """One of the two messages: how each path writes and reads it."""

    serialize: Callable[[Any], bytes]
    to_proto: Callable[[Any], Any]
    parse: Callable[[bytes], Any]
    message: Any
    from_proto: Callable[[Any], Any]

    def read_by_hand(self, data: bytes) -> tuple[str, Any]:
        return _outcome(lambda: self.from_proto(self.parse(data)))

    def read_by_protobuf(self, data: bytes) -> tuple[str, Any]:
        return _outcome(lambda: self.from_proto(self.message.FromString(data)))


HEADER = Head(
    serialize_step_header,
    step_header_to_proto,
    parse_step_header,
    main_server_pb2.StepHeader,
    step_header_from_proto,
)
RESULT = Head(
    serialize_step_result,
    step_result_to_proto,
    parse_step_result,
    main_server_pb2.StepResult,
    step_result_from_proto,
)


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", value) or ("raises", (exception type, message)), for comparing
    two paths."""
    try:
        return "ok", fn()
    except Exception as err:  # noqa: BLE001 - the type and message are compared
        return "raises", (type(err), str(err))


def _same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    """Outcomes equal, NaN equal to NaN (records compare field by field)."""
    return a[0] == b[0] and (a[1] == b[1] if a[0] == "raises" else repr(a[1]) == repr(b[1]))


def _is_double(info: Any, name: str) -> bool:
    """Whether the record's field `name` is a double on the wire."""
    return type(getattr(info, name)) in (int, float) and name not in (
        "round",
        "step",
        "num_tokens",
    )


def _headers() -> list[StepHeaderInfo]:
    rng = random.Random(13)
    out = []
    for i in range(300):
        out.append(
            StepHeaderInfo(
                round=UINTS[i % len(UINTS)],
                step=rng.choice(UINTS),
                mode=("train", "eval")[i % 2],
                downlink_bps=rng.choice(DOUBLES),
                tensor_names=NAMES[i % len(NAMES)],
                sent_unix_s=rng.choice(DOUBLES),
                initial_adapter=bool(i % 3 == 0),
            )
        )
    return out


def _results() -> list[StepResultInfo]:
    rng = random.Random(14)
    out = []
    for i in range(300):
        out.append(
            StepResultInfo(
                round=rng.choice(UINTS),
                step=UINTS[i % len(UINTS)],
                loss=rng.choice(DOUBLES),
                num_tokens=rng.choice((*UINTS, 2**40, 2**64 - 1)),
                server_compute_s=rng.choice(DOUBLES),
                server_forward_s=rng.choice(DOUBLES),
                server_backward_s=rng.choice(DOUBLES),
                server_update_s=rng.choice(DOUBLES),
                server_queue_s=rng.choice(DOUBLES),
                server_receive_s=rng.choice(DOUBLES),
                tensor_names=NAMES[i % len(NAMES)],
            )
        )
    return out


def test_written_bytes_are_protobufs() -> None:
    """Every value (zeros, -0.0, NaN, infinities, an int for a double, 10-byte
    varints, multi-byte names, a 200-byte name) serializes to protobuf's
    bytes, and reads back by hand, without protobuf, to what protobuf's
    parse gives (the validation refusing the same values: a negative or
    non-finite rate)."""
    for head, infos in ((HEADER, _headers()), (RESULT, _results())):
        accepted = 0
        for info in infos:
            data = head.serialize(info)
            assert data == head.to_proto(info).SerializeToString(), info
            assert type(head.parse(data)) in (HeaderFields, ResultFields)
            hand = head.read_by_hand(data)
            assert _same(hand, head.read_by_protobuf(data))
            if hand[0] == "ok":  # the record sent, its doubles as floats
                accepted += 1
                sent = {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}
                doubles = {k: float(v) for k, v in sent.items() if _is_double(info, k)}
                assert repr(hand[1]) == repr(type(info)(**{**sent, **doubles}))
        assert accepted >= 10  # and the rest refused alike


def test_modes_are_protobufs_numbers() -> None:
    assert STEP_MODE_NUMBERS == {
        "train": main_server_pb2.STEP_MODE_TRAIN,
        "eval": main_server_pb2.STEP_MODE_EVAL,
    }
    assert tuple(STEP_MODE_NUMBERS) == STEP_MODES


@pytest.mark.parametrize(
    "change",
    [
        {"round": -1},
        {"step": 2**32},
        {"round": True},
        {"mode": "bogus"},
        {"downlink_bps": "fast"},
        {"downlink_bps": 10**400},
        {"sent_unix_s": None},
        {"tensor_names": ["a", "b"]},
        {"tensor_names": ("a", 3)},
        {"tensor_names": ("\ud800",)},
        {"initial_adapter": 1},
    ],
)
def test_values_the_writer_does_not_cover_go_through_protobuf(change: dict[str, Any]) -> None:
    """Out of range, of another type, a lone surrogate: the writer leaves the
    value to protobuf, which writes or refuses it as it always did."""
    fields = {
        "round": 1,
        "step": 2,
        "mode": "train",
        "downlink_bps": 0.0,
        "tensor_names": ("a",),
        "sent_unix_s": 0.0,
        "initial_adapter": False,
    }
    info = StepHeaderInfo(**{**fields, **change})
    hand = _outcome(lambda: serialize_step_header(info))
    proto = _outcome(lambda: step_header_to_proto(info).SerializeToString())
    assert _same(hand, proto), (hand, proto)
    if "mode" in change:
        assert hand[0] == "raises" and hand[1][0] is WireError


@pytest.mark.parametrize("change", [{"num_tokens": -1}, {"num_tokens": 2**64}, {"loss": "x"}])
def test_result_values_the_writer_does_not_cover_go_through_protobuf(
    change: dict[str, Any],
) -> None:
    base = {"round": 0, "step": 0, "loss": 0.5, "num_tokens": 3, "server_compute_s": 0.1}
    info = StepResultInfo(**{**base, **change})
    hand = _outcome(lambda: serialize_step_result(info))
    proto = _outcome(lambda: step_result_to_proto(info).SerializeToString())
    assert _same(hand, proto), (hand, proto)
    assert hand[0] == "raises"


def _key(field: int, wire_type: int) -> bytes:
    return bytes((field << 3 | wire_type,))


def _odd_layouts() -> list[bytes]:
    """Valid protobuf in layouts protobuf never writes, and invalid bytes."""
    d = struct.pack("<d", 2.5)
    return [
        b"",
        _key(5, 2) + b"\x01b" + _key(2, 0) + b"\x07" + _key(5, 2) + b"\x01a",  # any order
        _key(2, 0) + b"\x01" + _key(2, 0) + b"\x09",  # a repeated scalar: the last wins
        _key(3, 0) + b"\x01" + _key(4, 1) + d + _key(4, 1) + struct.pack("<d", -1.0),
        _key(1, 0) + b"\x80\x80\x80\x80\x10",  # 2**32: protobuf truncates a uint32
        _key(3, 0) + varint(2**32 + 1),  # protobuf reads the enum as 1
        _key(4, 0) + varint(2**64 + 5),  # protobuf reads a uint64 as 5
        _key(7, 0) + varint(2**64),  # protobuf reads a bool as False
        _key(7, 0) + varint(2**64 + 2),
        _key(1, 0) + b"\x81\x00",  # an overlong varint
        _key(3, 0) + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a negative enum
        _key(7, 0) + b"\x05",  # a bool of 5
        _key(9, 0) + b"\x01",  # an unknown field
        _key(2, 2) + b"\x01\x01",  # a known field, another wire type
        _key(5, 2) + b"\x02\xc3",  # a name past the end
        _key(5, 2) + b"\x01\xff",  # invalid UTF-8
        _key(4, 1) + b"\x00\x00",  # a double past the end
        _key(1, 0) + b"\x80",  # a varint past the end
        b"\x88\x00\x01",  # an overlong key
        _key(1, 0) + b"\x80" * 11 + b"\x01",  # a varint longer than ten bytes
    ]


_VALID_HEADER = _key(3, 0) + b"\x01" + _key(5, 2) + b"\x01a"
"""A header the validation accepts (mode train, one name): in front of an odd
layout, what the layout's field decodes to is seen in the record."""


def _mutations(seed: int, samples: list[bytes]) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for data in samples:
        for _ in range(8):
            b = bytearray(data)
            op = rng.randrange(3)
            if op == 0 and b:
                del b[rng.randrange(len(b)) :]
            elif op == 1 and b:
                b[rng.randrange(len(b))] = rng.randrange(256)
            else:
                b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
            out.append(bytes(b))
    return out


def test_reading_any_bytes_matches_protobuf() -> None:
    """Odd layouts, invalid bytes and 4800 random mutations of valid heads: the
    hand reader, then the usual validation, gives protobuf's record or
    raises protobuf's error (or the validation's WireError) for each."""
    headers = [serialize_step_header(h) for h in _headers()]
    results = [serialize_step_result(r) for r in _results()]
    cases = (
        (
            HEADER,
            headers
            + _odd_layouts()
            + [_VALID_HEADER + odd for odd in _odd_layouts()]
            + _mutations(1, headers),
        ),
        (RESULT, results + _odd_layouts() + _mutations(2, results)),
    )
    by_hand = 0
    for head, samples in cases:
        for data in samples:
            hand, proto = head.read_by_hand(data), head.read_by_protobuf(data)
            assert _same(hand, proto), (data, hand, proto)
            parsed = _outcome(lambda d=data, h=head: h.parse(d))[1]
            by_hand += type(parsed) in (HeaderFields, ResultFields)
    assert by_hand > 1500  # the 600 valid heads, and most mutations still valid, by hand
    assert _outcome(lambda: parse_step_header(_key(5, 2) + b"\x01\xff"))[1][0] is DecodeError


def test_step_heads_cross_the_codec_without_protobuf(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step's header and a reply's result (in its first part, or alone for an
    EVAL step) are written and read without protobuf's messages: with them
    made to fail, a whole step still round-trips. Before fedsllm.wire.heads
    each went through step_*_to_proto and FromString."""
    import torch

    header = StepHeaderInfo(
        round=2, step=7, mode="train", downlink_bps=0.0, tensor_names=("activations",)
    )
    result = StepResultInfo(
        round=2,
        step=7,
        loss=1.25,
        num_tokens=9,
        server_compute_s=0.5,
        tensor_names=("activations_grad",),
    )
    eval_result = StepResultInfo(round=2, step=8, loss=0.75, num_tokens=3, server_compute_s=0.1)
    frames = [tensor_to_frame("activations", torch.arange(12.0).reshape(1, 3, 4))]
    grad = [tensor_to_frame("activations_grad", torch.arange(12.0).reshape(1, 3, 4))]

    def fail(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("protobuf on a step's hot path")

    for name in ("step_header_to_proto", "step_result_to_proto"):
        monkeypatch.setattr(heads, name, fail)
    for message in (main_server_pb2.StepHeader, main_server_pb2.StepResult):
        monkeypatch.setattr(message, "FromString", fail)
        monkeypatch.setattr(message, "SerializeToString", fail)
    monkeypatch.setattr(main_server_pb2.TrainResponse, "SerializeToString", fail)
    monkeypatch.setattr(main_server_pb2.TrainResponse, "FromString", fail)

    up = [
        decode_train_request(encode_train_request(p))
        for p in step_upload_requests(header, frames, 16)
    ]
    assert all(type(m) is ReceivedPart for m in up)
    assert parse_train_request(up[0]).header == header
    down = [
        decode_train_response(encode_train_response(p))
        for p in step_download_responses(result, grad, 16)
    ]
    assert parse_train_response(down[0]).result == result
    alone = decode_train_response(encode_train_response(eval_result))
    assert type(alone) is ReceivedResult
    assert parse_train_response(alone) == eval_result


def test_a_reply_without_tensors_is_protobufs_train_response() -> None:
    """The EVAL reply (TrainResponse.result) is protobuf's bytes, and a
    TrainResponse with anything beside the result is left to protobuf."""
    info = StepResultInfo(round=1, step=2, loss=0.5, num_tokens=4, server_compute_s=0.25)
    wire = encode_train_response(info)
    assert wire == train_response(info).SerializeToString()
    assert parse_train_response(decode_train_response(wire)) == info
    empty = StepResultInfo(round=0, step=0, loss=0.0, num_tokens=0, server_compute_s=0.0)
    assert encode_train_response(empty) == train_response(empty).SerializeToString() == b"\x12\x00"
    assert parse_train_response(decode_train_response(b"\x12\x00")) == empty
    twice = wire + wire  # protobuf merges the two results
    decoded = decode_train_response(twice)
    assert type(decoded) is main_server_pb2.TrainResponse
    assert parse_train_response(decoded) == info
    with pytest.raises(DecodeError):
        decode_train_response(wire[:-1])


def test_a_received_result_out_of_place_is_named() -> None:
    """A reply without tensors where the welcome belongs is refused naming its
    kind, as a protobuf TrainResponse was; its size and bytes are the
    message's, for pacing and relaying."""
    from fedsllm.wire.train import message_bytes, read_downlink

    info = StepResultInfo(round=0, step=0, loss=0.5, num_tokens=1, server_compute_s=0.1)
    wire = encode_train_response(info)
    received = decode_train_response(wire)
    assert type(received) is ReceivedResult
    assert message_bytes(received) == len(wire)
    assert encode_train_response(received) == wire
    with pytest.raises(WireError, match="first message must be welcome, got result"):
        list(read_downlink([received], lambda _result: []))


def test_what_protobuf_truncates_or_refuses_in_a_part_is_protobufs() -> None:
    """A varint of 2**64 or more (protobuf keeps its low 64 bits) and field
    number 0 (protobuf refuses the message) are read in a step's part as
    protobuf reads them: the codec's hand reader leaves both to protobuf."""
    from fedsllm.wire.tensors import Chunk, chunk_to_proto

    chunk = chunk_to_proto(Chunk("activations", "float32", (1, 1, 2), 8, 0, bytes(8)))
    body = chunk.SerializeToString()
    part_chunk = _key(2, 2) + varint(len(body)) + body
    for tail, end in ((_key(3, 0) + varint(2**64), False), (_key(3, 0) + varint(2**64 + 1), True)):
        part = part_chunk + tail
        wire = _key(5, 2) + varint(len(part)) + part  # TrainRequest.part
        assert main_server_pb2.TrainRequest.FromString(wire).part.end is end
        assert parse_train_request(decode_train_request(wire)).end is end
    offset_body = (  # an offset of 2**64: protobuf reads 0
        chunk_header("activations", "float32", (1, 1, 2), 8)
        + (_key(5, 0) + varint(2**64))
        + (_key(6, 2) + varint(8) + bytes(8))
    )
    part = _key(2, 2) + varint(len(offset_body)) + offset_body
    wire = _key(5, 2) + varint(len(part)) + part
    assert main_server_pb2.TrainRequest.FromString(wire).part.chunks[0].offset == 0
    assert parse_train_request(decode_train_request(wire)).chunks[0].offset == 0
    zero = _key(2, 2) + varint(2) + b"\x00\x00"  # a chunk holding field number 0
    wire = _key(5, 2) + varint(len(zero)) + zero
    with pytest.raises(DecodeError):
        main_server_pb2.TrainRequest.FromString(wire)
    with pytest.raises(DecodeError):
        decode_train_request(wire)
