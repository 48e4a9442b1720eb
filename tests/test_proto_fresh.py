"""The committed stubs in fedsllm/proto/ are exactly what the generator makes
from proto/fedsllm/proto/*.proto; edit a .proto and forget to regenerate,
and this fails naming the stale file.

The generator runs as a subprocess from the repository root, exactly as
documented (`python -m fedsllm.wire.protogen --out DIR`), which also keeps
this file free of imports that tests/fedsllm/ could shadow.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMITTED = REPO_ROOT / "fedsllm" / "proto"
PROTOS = sorted((REPO_ROOT / "proto" / "fedsllm" / "proto").glob("*.proto"))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    assert {p.stem for p in PROTOS} >= {"tensor", "main_server", "fed_server", "controller"}
    proc = _run("-m", "fedsllm.wire.protogen", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    fresh_dir = tmp_path / "fedsllm" / "proto"
    fresh = {p.name: p.read_bytes() for p in fresh_dir.iterdir() if p.is_file()}
    expected = {
        f"{p.stem}{suffix}" for p in PROTOS for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
    } | {"__init__.py"}
    assert set(fresh) == expected
    stale = [
        name
        for name, data in sorted(fresh.items())
        if not (COMMITTED / name).is_file() or (COMMITTED / name).read_bytes() != data
    ]
    assert not stale, (
        f"stale or missing generated files in {COMMITTED}: {stale}; "
        "run `python -m fedsllm.wire.protogen`"
    )
    committed = {p.name for p in COMMITTED.iterdir() if p.suffix in (".py", ".pyi")}
    extra = sorted(committed - expected)
    assert not extra, f"generated files without a .proto in {COMMITTED}: {extra}"


def test_every_proto_has_importable_stubs() -> None:
    code = "; ".join(
        f"import fedsllm.proto.{p.stem}_pb2 as m, fedsllm.proto.{p.stem}_pb2_grpc; "
        f"assert m.DESCRIPTOR.package == 'fedsllm.proto', m.DESCRIPTOR.package"
        for p in PROTOS
    )
    proc = _run("-c", code)
    assert proc.returncode == 0, proc.stderr
