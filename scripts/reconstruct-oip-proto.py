#!/usr/bin/env python3
"""Rebuild the Open Inference Protocol's ``open_inference_grpc.proto`` from a PyPI package.

The spec's proto (kserve/open-inference-protocol, ``specification/protocol/
open_inference_grpc.proto``) ships in no package on the registries this project can reach.
``open-inference-grpc`` (PyPI, Apache-2.0, the Open Inference Protocol python-clients project)
ships the code protoc generated from it, and that code embeds the compiled file: a serialized
``FileDescriptorProto`` named ``open_inference_grpc.proto``. This script takes that descriptor
out of the wheel (parsing the module's source, never importing it), prints it back as .proto
text, compiles the text with grpcio-tools' protoc and checks that the result is the very same
descriptor (messages, fields, numbers, types, labels, oneofs, maps, services, options).

    .venv/bin/python scripts/reconstruct-oip-proto.py           # download the wheel, write
    .venv/bin/python scripts/reconstruct-oip-proto.py --wheel DOWNLOADED.whl
    .venv/bin/python scripts/reconstruct-oip-proto.py --check   # exit 1 when the file differs

Then ``make proto`` regenerates ``service/_proto/inference/``. Exit codes: 0 written or up to
date; 1 differs (with --check); 2 the wheel is unusable or the round trip failed.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "proto" / "inference" / "open_inference_grpc.proto"
PACKAGE = "open-inference-grpc"
VERSION = "2.0.0"
MODULE = "open_inference/grpc/protocol.py"  # the generated code inside the wheel
SOURCE_NAME = "open_inference_grpc.proto"  # the descriptor's file name: the spec's file

FDP = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    FDP.TYPE_DOUBLE: "double",
    FDP.TYPE_FLOAT: "float",
    FDP.TYPE_INT64: "int64",
    FDP.TYPE_UINT64: "uint64",
    FDP.TYPE_INT32: "int32",
    FDP.TYPE_FIXED64: "fixed64",
    FDP.TYPE_FIXED32: "fixed32",
    FDP.TYPE_BOOL: "bool",
    FDP.TYPE_STRING: "string",
    FDP.TYPE_BYTES: "bytes",
    FDP.TYPE_UINT32: "uint32",
    FDP.TYPE_SFIXED32: "sfixed32",
    FDP.TYPE_SFIXED64: "sfixed64",
    FDP.TYPE_SINT32: "sint32",
    FDP.TYPE_SINT64: "sint64",
}


class Unusable(Exception):
    pass


def download(directory: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--dest",
            str(directory),
            f"{PACKAGE}=={VERSION}",
        ],
        check=True,
    )
    wheels = sorted(directory.glob("*.whl"))
    if len(wheels) != 1:
        raise Unusable(f"expected one wheel in {directory}, found {len(wheels)}")
    return wheels[0]


def generated_module(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(MODULE).decode("utf-8")


def embedded_descriptor(source: str) -> descriptor_pb2.FileDescriptorProto:
    """The bytes literal handed to ``AddSerializedFile``, parsed."""
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
            and node.args
        ):
            data = ast.literal_eval(node.args[0])
            if isinstance(data, bytes):
                return descriptor_pb2.FileDescriptorProto.FromString(data)
    raise Unusable(f"no AddSerializedFile(b'...') call in {MODULE}")


def licence_notice(source: str) -> list[str]:
    """The leading ``#`` comment block of the generated module: its copyright and licence."""
    notice = []
    for line in source.splitlines():
        if not line.startswith("#"):
            break
        notice.append(line[1:].strip())
    if not any("Apache License" in line for line in notice):
        raise Unusable(f"{MODULE} does not start with an Apache-2.0 notice")
    return notice


# -------------------------------------------------------------------------------------------
# FileDescriptorProto -> .proto text
# -------------------------------------------------------------------------------------------


def _type_name(field: descriptor_pb2.FieldDescriptorProto, scope: str, package: str) -> str:
    if field.type in SCALARS:
        return SCALARS[field.type]
    if field.type not in (FDP.TYPE_MESSAGE, FDP.TYPE_ENUM):
        raise Unusable(f"field {field.name}: type {field.type} not supported")
    name = field.type_name
    for prefix in (f"{scope}.", f".{package}."):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _message(
    message: descriptor_pb2.DescriptorProto, scope: str, package: str, indent: str
) -> list[str]:
    full = f"{scope}.{message.name}"
    if message.enum_type or message.extension or message.extension_range or message.reserved_range:
        raise Unusable(f"message {message.name}: enums, extensions and reserved not supported")
    if message.options.ListFields():
        raise Unusable(f"message {message.name}: options not supported")
    maps = {
        f"{full}.{nested.name}": nested
        for nested in message.nested_type
        if nested.options.map_entry
    }
    lines = [f"{indent}message {message.name} {{"]
    for nested in message.nested_type:
        if not nested.options.map_entry:
            lines += _message(nested, full, package, indent + "  ")
    real_oneofs = {
        field.oneof_index
        for field in message.field
        if field.HasField("oneof_index") and not field.proto3_optional
    }
    emitted: set[int] = set()
    for field in message.field:
        if field.options.ListFields() or field.HasField("default_value"):
            raise Unusable(f"field {field.name}: options and defaults not supported")
        if field.HasField("oneof_index") and field.oneof_index in real_oneofs:
            index = field.oneof_index
            if index in emitted:
                continue
            emitted.add(index)
            lines.append(f"{indent}  oneof {message.oneof_decl[index].name} {{")
            for member in message.field:
                if member.HasField("oneof_index") and member.oneof_index == index:
                    kind = _type_name(member, full, package)
                    lines.append(f"{indent}    {kind} {member.name} = {member.number};")
            lines.append(f"{indent}  }}")
            continue
        if field.type_name in maps:
            entry = maps[field.type_name]
            key, value = entry.field
            kind = f"map<{_type_name(key, full, package)}, {_type_name(value, full, package)}>"
        else:
            kind = _type_name(field, full, package)
            if field.label == FDP.LABEL_REPEATED:
                kind = f"repeated {kind}"
            elif field.proto3_optional:
                kind = f"optional {kind}"
        lines.append(f"{indent}  {kind} {field.name} = {field.number};")
    lines.append(f"{indent}}}")
    return lines


def proto_text(fd: descriptor_pb2.FileDescriptorProto, header: list[str]) -> str:
    if fd.syntax != "proto3" or fd.dependency or fd.enum_type or fd.extension:
        raise Unusable("only a proto3 file without imports, enums or extensions is supported")
    if fd.options.ListFields():
        raise Unusable("file options not supported")
    lines = [*header, "", 'syntax = "proto3";', "", f"package {fd.package};", ""]
    for service in fd.service:
        lines.append(f"service {service.name} {{")
        for method in service.method:
            if method.client_streaming or method.server_streaming:
                raise Unusable(f"rpc {method.name}: streaming not supported")
            if method.options.ListFields():
                raise Unusable(f"rpc {method.name}: options not supported")
            body = " {}" if method.HasField("options") else ";"
            request = method.input_type.removeprefix(f".{fd.package}.")
            response = method.output_type.removeprefix(f".{fd.package}.")
            lines.append(f"  rpc {method.name}({request}) returns ({response}){body}")
        lines.append("}")
        lines.append("")
    for message in fd.message_type:
        lines += _message(message, f".{fd.package}", fd.package, "")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def compiled(text: str, name: str) -> descriptor_pb2.FileDescriptorProto:
    """``text`` compiled by grpcio-tools' protoc, as a descriptor named ``name``."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / name).write_text(text)
        out = root / "set.pb"
        code = protoc.main(["protoc", f"-I{root}", f"--descriptor_set_out={out}", str(root / name)])
        if code != 0:
            raise Unusable(f"protoc rejected the reconstructed text (exit code {code})")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return files[0]


def _without_json_names(
    fd: descriptor_pb2.FileDescriptorProto,
) -> descriptor_pb2.FileDescriptorProto:
    """protoc records json_name in descriptor sets; generated Python code leaves it out."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(fd)

    def clear(messages: list[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            for field in message.field:
                field.ClearField("json_name")
            clear(list(message.nested_type))

    clear(list(copy.message_type))
    return copy


def reconstruct(wheel: Path) -> str:
    source = generated_module(wheel)
    original = embedded_descriptor(source)
    if original.name != SOURCE_NAME:
        raise Unusable(f"{MODULE} embeds {original.name!r}, not {SOURCE_NAME!r}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    header = [
        f"// The Open Inference Protocol (v2) gRPC API: {SOURCE_NAME}, the spec's proto",
        "// (kserve/open-inference-protocol, specification/protocol/open_inference_grpc.proto).",
        "//",
        "// GENERATED by scripts/reconstruct-oip-proto.py: do not edit. Reconstructed",
        f"// mechanically from the FileDescriptorProto named {SOURCE_NAME} that protoc",
        f"// compiled into {MODULE} of the PyPI package",
        f"// {PACKAGE}=={VERSION} ({wheel.name},",
        f"// sha256 {digest}),",
        "// and checked to compile back to the same descriptor. The spec's comments are not in",
        "// the descriptor, so they are not here; names, numbers, types and labels are. The",
        "// package marks the version fields `optional` (explicit presence; same wire format).",
        "//",
        "// The package's notice, as it stands at the top of that module. The package ships no",
        "// licence file: LICENSE beside this file is the Apache License 2.0 text as Debian's",
        "// base-files installs it (/usr/share/common-licenses/Apache-2.0).",
        "//",
        *[f"// {line}".rstrip() for line in licence_notice(source)],
    ]
    text = proto_text(original, header)
    back = compiled(text, SOURCE_NAME)
    if _without_json_names(back) != _without_json_names(original):
        raise Unusable("the reconstructed text does not compile back to the same descriptor")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--wheel",
        type=Path,
        help=f"a downloaded {PACKAGE}=={VERSION} wheel (default: pip download it)",
    )
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the .proto")
    parser.add_argument(
        "--check", action="store_true", help="only compare with --out; exit 1 when it differs"
    )
    args = parser.parse_args(argv)
    try:
        if args.wheel is not None:
            text = reconstruct(args.wheel)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                text = reconstruct(download(Path(tmp)))
    except (Unusable, OSError, KeyError, subprocess.CalledProcessError) as exc:
        print(f"reconstruct-oip-proto: {exc}", file=sys.stderr)
        return 2
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} differs from the reconstruction", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
