"""Generate the Python gRPC code in this package from ``proto/``.

One command, run from the repository root::

    python -m teaching_cri.api.generate

grpcio-tools is pinned in the ``test`` extra because its output embeds its own
version: ``tests/test_api_generated.py`` regenerates into a temporary directory
and fails when the checked-in files differ, so a changed ``.proto`` can never
ship with stale stubs.

protoc's Python plugins write absolute imports (``import api_pb2``), which only
work when the output directory is on ``sys.path``. The one rewrite below turns
them into package-relative imports so the stubs live inside ``teaching_cri.api``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

PROTO_FILES = ("api.proto", "trace.proto", "admin.proto")
REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_PROTO_DIR = REPO_ROOT / "proto"
DEFAULT_OUT_DIR = Path(__file__).resolve().parent

_ABSOLUTE_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def generated_names() -> list[str]:
    """The files ``generate`` writes, in a stable order."""
    names = []
    for proto in PROTO_FILES:
        stem = proto.removesuffix(".proto")
        names += [f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"]
    return names


def generate(proto_dir: Path = DEFAULT_PROTO_DIR, out_dir: Path = DEFAULT_OUT_DIR) -> list[Path]:
    """Run protoc on every proto file and write the stubs into ``out_dir``."""
    from grpc_tools import protoc  # a test/dev dependency, not needed at run time

    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(proto_dir / p) for p in PROTO_FILES),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto_dir}")
        written = []
        for name in generated_names():
            text = (Path(tmp) / name).read_text()
            text = _ABSOLUTE_IMPORT.sub(r"from . import \1 as \2", text)
            target = out_dir / name
            target.write_text(text)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto-dir", type=Path, default=DEFAULT_PROTO_DIR)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    args = parser.parse_args(argv)
    for path in generate(args.proto_dir, args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
