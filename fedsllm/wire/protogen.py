"""Generate the committed protobuf and gRPC stubs from proto/fedsllm/proto/.

The one way the files in fedsllm/proto/ are made: the pinned grpc_tools
protoc, with -I at the root of the package path so the generated imports
(`from fedsllm.proto import tensor_pb2`) resolve without path tricks.
tests/test_proto_fresh.py runs it into a temporary directory and compares.

    python -m fedsllm.wire.protogen [--out DIR]

DIR is the root the package path is written under (default: the repository
root, so the files land in ./fedsllm/proto/).
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
PROTO_PACKAGE = Path("fedsllm") / "proto"

_INIT_TEXT = '"""Generated protobuf and gRPC stubs; see proto/ and fedsllm.wire.protogen."""\n'


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """The .proto files, relative to `proto_root`, in a stable order."""
    return sorted(p.relative_to(proto_root) for p in (proto_root / PROTO_PACKAGE).glob("*.proto"))


def generate(out_root: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Write the stubs under `out_root`/fedsllm/proto/ and return their paths.

    Raises RuntimeError when protoc fails, since stale or missing stubs would
    otherwise surface much later as confusing import errors.
    """
    from grpc_tools import protoc

    files = proto_files(proto_root)
    if not files:
        raise RuntimeError(f"no .proto files under {proto_root / PROTO_PACKAGE}")
    out_root = Path(out_root)
    target = out_root / PROTO_PACKAGE
    target.mkdir(parents=True, exist_ok=True)
    include = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--pyi_out={out_root}",
        *[str(f) for f in files],
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc exited with {rc} for {args}")
    init = target / "__init__.py"
    init.write_text(_INIT_TEXT)
    written = [init]
    for f in files:
        stem = f.stem
        written += [
            target / f"{stem}_pb2.py",
            target / f"{stem}_pb2.pyi",
            target / f"{stem}_pb2_grpc.py",
        ]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedsllm.wire.protogen", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT,
        help="root under which fedsllm/proto/ is written (default: repo root)",
    )
    ns = parser.parse_args(argv)
    for path in generate(ns.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
