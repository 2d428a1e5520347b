"""Generate the checked-in Python code for ``proto/`` (``make proto``).

grpcio-tools writes ``from forecast.v1 import forecast_pb2`` into the service module; the import
is rewritten to the package path the code lives under. A test regenerates into a temporary
directory and fails when the checked-in files are stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_FILES = ("forecast/v1/forecast.proto",)
PACKAGE = "service._proto"
DEFAULT_OUT = ROOT / "service" / "_proto"


def generate(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    for proto in PROTO_FILES:
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"-I{include}",
                f"--python_out={out_dir}",
                f"--pyi_out={out_dir}",
                f"--grpc_python_out={out_dir}",
                str(PROTO_ROOT / proto),
            ]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed on {proto} with exit code {code}")
    written = sorted(p for p in out_dir.rglob("*.py*") if p.is_file())
    for path in written:
        text = path.read_text()
        fixed = text.replace("from forecast.v1 import", f"from {PACKAGE}.forecast.v1 import")
        if fixed != text:
            path.write_text(fixed)
    for package in {p.parent for p in written} | {out_dir}:
        init = package / "__init__.py"
        while package != out_dir.parent and not init.exists():
            init.write_text("")
            package = package.parent
            init = package / "__init__.py"
    return sorted(p for p in out_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
