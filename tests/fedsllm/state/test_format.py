from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load

from fedsllm.errors import StateError
from fedsllm.state.errors import StoreFormatError
from fedsllm.state.format import (
    FORMAT_VERSION,
    VERSION_KEY,
    atomic_write,
    check_safetensors,
    decode_doc,
    encode_doc,
    stamp_safetensors,
    tensor_digest,
)
from tests.fedsllm.state._blobs import adapter


def test_doc_round_trip_and_version_field() -> None:
    raw = encode_doc("k", {"a": 1})
    assert json.loads(raw)["format_version"] == FORMAT_VERSION
    assert decode_doc("f.json", raw, "k") == {"a": 1}


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"format_version": FORMAT_VERSION + 1, "kind": "k", "data": {}}, "format version"),
        ({"kind": "k", "data": {}}, "no format_version"),
        ({"format_version": FORMAT_VERSION, "kind": "other", "data": {}}, "kind 'other'"),
    ],
)
def test_doc_of_another_version_or_kind_is_refused(doc: dict, needle: str) -> None:
    with pytest.raises(StoreFormatError, match=needle) as info:
        decode_doc("dir/f.json", json.dumps(doc).encode(), "k")
    assert "dir/f.json" in str(info.value)
    assert isinstance(info.value, StateError)


def test_garbage_doc_is_refused() -> None:
    with pytest.raises(StoreFormatError, match="not JSON"):
        decode_doc("f.json", b"\xff{", "k")


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_stamp_keeps_tensors_and_adds_version(dtype: str) -> None:
    blob = adapter(1, dtype)
    stamped = stamp_safetensors(blob, {"x": "y"})
    meta = check_safetensors("a.safetensors", stamped)
    assert meta[VERSION_KEY] == str(FORMAT_VERSION) and meta["x"] == "y"
    before, after = load(blob), load(stamped)
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].tobytes() == after[key].tobytes()
    assert tensor_digest(blob) == tensor_digest(stamped)
    # the header stays 8-byte aligned, as safetensors writes it
    assert int.from_bytes(stamped[:8], "little") % 8 == 0


def test_bf16_is_stamped_without_parsing_tensors() -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load as tload
    from safetensors.torch import save as tsave

    blob = tsave({"w": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)})
    stamped = stamp_safetensors(blob)
    assert torch.equal(tload(stamped)["w"], tload(blob)["w"])


def test_unstamped_or_other_version_tensors_are_refused() -> None:
    with pytest.raises(StoreFormatError, match="None"):
        check_safetensors("a.safetensors", adapter(0))
    other = stamp_safetensors(adapter(0), {})
    other = other.replace(
        f'"{VERSION_KEY}":"{FORMAT_VERSION}"'.encode(), f'"{VERSION_KEY}":"9"'.encode()
    )
    with pytest.raises(StoreFormatError, match="'9'"):
        check_safetensors("a.safetensors", other)
    with pytest.raises(StoreFormatError, match="not a safetensors"):
        check_safetensors("a.safetensors", b"abc")


def test_digest_sees_every_byte_and_name() -> None:
    a = adapter(0)
    state = load(a)
    from safetensors.numpy import save

    flipped = dict(state)
    flipped["lora_A"] = state["lora_A"].copy()
    flipped["lora_A"].flat[0] = np.nextafter(flipped["lora_A"].flat[0], np.float32(9))
    renamed = {"lora_X": state["lora_A"], "lora_B": state["lora_B"]}
    digests = {tensor_digest(a), tensor_digest(save(flipped)), tensor_digest(save(renamed))}
    assert len(digests) == 3


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path) -> None:
    target = tmp_path / "sub" / "f.bin"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]
