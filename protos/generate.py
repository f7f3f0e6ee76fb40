"""Regenerate the Python code of the coldstart API from its .proto files.

The .proto files are the single source of truth; the generated `*_pb2.py`,
`*_pb2.pyi` and `*_pb2_grpc.py` are committed beside them so that installing
the package needs no protoc. `tests/protos/test_generated.py` regenerates into
a temporary folder and fails when the committed files are stale.

Run after editing a .proto file:  python protos/generate.py
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

PROTO_ROOT = Path(__file__).resolve().parent


def proto_files() -> list[Path]:
    """The API's .proto files, relative to `PROTO_ROOT` (their import paths)."""
    return sorted(path.relative_to(PROTO_ROOT) for path in PROTO_ROOT.glob("coldstart/**/*.proto"))


def generated_files(root: Path) -> list[Path]:
    """The generated code files under `root`, relative to it."""
    patterns = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")
    return sorted(
        path.relative_to(root) for p in patterns for path in root.glob(f"coldstart/*/{p}")
    )


def generate(out_dir: Path = PROTO_ROOT) -> list[Path]:
    """Run grpc_tools.protoc over every .proto file, writing the code under `out_dir`.

    Returns the generated files, relative to `out_dir`.
    """
    out = str(out_dir)
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(path) for path in proto_files()),
    ]
    result = subprocess.run(command, cwd=PROTO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"protoc failed ({result.returncode}): {result.stderr.strip()}")
    generated = generated_files(out_dir)
    logger.info("generated %s files under %s", len(generated), out_dir)
    return generated


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    generate()
