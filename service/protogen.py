"""Generate the checked-in Python code for ``proto/`` (``make proto``).

grpcio-tools writes ``from forecast.v1 import forecast_pb2`` (``from inference import ...``) into
the service modules; the imports are rewritten to the package path the code lives under.
``proto/inference/open_inference_grpc.proto`` is the Open Inference Protocol's, vendored by
``scripts/reconstruct-oip-proto.py``. Its code registers the file in a descriptor pool of its
own (the module's ``POOL``) instead of protobuf's default one: tritonclient, KServe and MLServer
register the same ``inference.*`` names in the default pool, and a second registration there
fails on import ("duplicate symbol 'inference.ServerLiveRequest'"), so a process could not hold
both this service and one of those clients (the tests hold tritonclient). A ``LICENSE`` beside a
vendored proto is copied beside its generated code.

A test regenerates into a temporary directory and fails when the checked-in files are stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_FILES = ("forecast/v1/forecast.proto", "inference/open_inference_grpc.proto")
PACKAGE = "service._proto"
DEFAULT_OUT = ROOT / "service" / "_proto"
# Generated modules whose file goes into a pool of their own (see above).
PRIVATE_POOL_MODULES = ("inference/open_inference_grpc_pb2.py",)
DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
PRIVATE_POOL = (
    "POOL = _descriptor_pool.DescriptorPool()  # not the default pool: see service/protogen.py\n"
    "DESCRIPTOR = POOL.AddSerializedFile("
)


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
    dotted = sorted({str(Path(proto).parent).replace("/", ".") for proto in PROTO_FILES})
    for path in written:
        text = path.read_text()
        fixed = text
        for name in dotted:
            fixed = fixed.replace(f"from {name} import", f"from {PACKAGE}.{name} import")
        if path.relative_to(out_dir).as_posix() in PRIVATE_POOL_MODULES:
            if DEFAULT_POOL not in fixed:
                raise RuntimeError(f"{path}: no default-pool registration to replace")
            fixed = fixed.replace(DEFAULT_POOL, PRIVATE_POOL)
        if fixed != text:
            path.write_text(fixed)
    for proto in PROTO_FILES:  # a vendored proto's licence goes along with its code
        licence = (PROTO_ROOT / proto).parent / "LICENSE"
        if licence.is_file():
            (out_dir / Path(proto).parent / "LICENSE").write_bytes(licence.read_bytes())
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
