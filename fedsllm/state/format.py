"""The on-disk format of every persisted state file: one format version, atomic writes.

Two kinds of file, each carrying FORMAT_VERSION:

- metadata documents, JSON: ``{"format_version": 1, "kind": ..., "data": {...}}``;
- tensors, safetensors, with ``FORMAT_VERSION`` under the header's
  ``__metadata__[VERSION_KEY]``. The tensors are never parsed to stamp or check
  a file (only the JSON header is rewritten), so any dtype passes, bf16
  included, and loaders that ignore metadata read a stamped file unchanged.

A file of another version, or without one, is refused with StoreFormatError
naming it. `atomic_write` is the only writer: temp file in the same
directory, fsync, os.replace, fsync of the directory. Which files form one
commit, and in what order, is left to fedsllm/state/store.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedsllm.state.errors import StoreFormatError

FORMAT_VERSION = 1
"""Bumped on any incompatible change of a persisted file; a build reads only its own."""

VERSION_KEY = "fedsllm_state_format"
"""The safetensors __metadata__ key that holds FORMAT_VERSION (as a string)."""

_HEADER_ALIGN = 8


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)


# ------------------------------------------------------------------ JSON documents
def encode_doc(kind: str, data: Mapping[str, Any]) -> bytes:
    doc = {"format_version": FORMAT_VERSION, "kind": kind, "data": dict(data)}
    return json.dumps(doc, sort_keys=True, indent=1).encode()


def decode_doc(name: str, raw: bytes, kind: str) -> dict[str, Any]:
    """The `data` of a document written by encode_doc(kind, ...); refuses anything else."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreFormatError(name, None, FORMAT_VERSION, f"not JSON ({err})") from None
    if not isinstance(doc, dict) or "format_version" not in doc:
        raise StoreFormatError(name, None, FORMAT_VERSION, "no format_version field")
    if doc["format_version"] != FORMAT_VERSION:
        raise StoreFormatError(name, doc["format_version"], FORMAT_VERSION)
    if doc.get("kind") != kind:
        raise StoreFormatError(
            name, doc["format_version"], FORMAT_VERSION, f"kind {doc.get('kind')!r}, not {kind!r}"
        )
    data = doc.get("data")
    if not isinstance(data, dict):
        raise StoreFormatError(name, doc["format_version"], FORMAT_VERSION, "no data object")
    return data


# ------------------------------------------------------------------ safetensors
def _split(name: str, blob: bytes) -> tuple[dict[str, Any], memoryview]:
    view = memoryview(blob)
    if len(view) < 8:
        raise StoreFormatError(name, None, FORMAT_VERSION, "not a safetensors file (too short)")
    (size,) = struct.unpack("<Q", view[:8])
    if 8 + size > len(view):
        raise StoreFormatError(name, None, FORMAT_VERSION, "not a safetensors file (header size)")
    try:
        header = json.loads(bytes(view[8 : 8 + size]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise StoreFormatError(
            name, None, FORMAT_VERSION, "not a safetensors file (header is not JSON)"
        ) from None
    if not isinstance(header, dict):
        raise StoreFormatError(name, None, FORMAT_VERSION, "not a safetensors file")
    return header, view[8 + size :]


def _join(header: Mapping[str, Any], data: memoryview) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % _HEADER_ALIGN)
    return struct.pack("<Q", len(raw)) + raw + bytes(data)


def stamp_safetensors(blob: bytes, extra: Mapping[str, str] | None = None) -> bytes:
    """`blob` with FORMAT_VERSION (and `extra` strings) in its __metadata__."""
    header, data = _split("<blob>", blob)
    meta = dict(header.get("__metadata__") or {})
    meta.update(extra or {})
    meta[VERSION_KEY] = str(FORMAT_VERSION)
    header["__metadata__"] = meta
    return _join(header, data)


def check_safetensors(name: str, blob: bytes) -> dict[str, str]:
    """Refuse a safetensors file of another format version; returns its __metadata__."""
    header, _ = _split(name, blob)
    meta = header.get("__metadata__") or {}
    found = meta.get(VERSION_KEY)
    if found != str(FORMAT_VERSION):
        raise StoreFormatError(name, found, FORMAT_VERSION)
    return dict(meta)


def tensor_digest(blob: bytes) -> str:
    """sha256 of the tensors of a safetensors blob: names, dtypes, shapes and bytes
    in name order. Metadata and header layout do not count, so a stamped copy
    has the digest of the bytes the client sent."""
    header, data = _split("<blob>", blob)
    h = hashlib.sha256()
    for key in sorted(k for k in header if k != "__metadata__"):
        entry = header[key]
        begin, end = entry["data_offsets"]
        h.update(json.dumps([key, entry["dtype"], entry["shape"]]).encode())
        h.update(struct.pack("<Q", end - begin))
        h.update(data[begin:end])
    return h.hexdigest()
