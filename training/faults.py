"""Deliberately broken copies of a published version, for demos and alert tests.

``python -m training.faults zero-head SRC --output BASE`` writes a new version whose output
layer's kernel is zeroed: the model then ignores its input and returns a constant (its bias),
the exact failure the collapse detector must catch. The copy is re-sealed with correct
checksums, so it passes artifact verification like any real bad model version would.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from training.artifacts import ArtifactError, load_artifacts, new_version_name, publish
from training.cli import command_parser
from training.manifest import MANIFEST_FILE, MODEL_FILE, Fault, Manifest


def zero_head(source: str | Path, output: str | Path) -> Path:
    """Publish a copy of ``source`` (a version or base dir) with the head's kernel zeroed."""
    import numpy as np

    artifacts = load_artifacts(source)
    model = artifacts.model
    head = model.layers[-1]
    kernel, *rest = head.get_weights()
    head.set_weights([np.zeros_like(kernel), *rest])
    manifest = replace(
        artifacts.manifest, fault=Fault(kind="zero-head", source_version=artifacts.version)
    )

    def write(directory: Path) -> Manifest:
        for item in artifacts.path.iterdir():
            if item.name not in (MODEL_FILE, MANIFEST_FILE) and item.is_file():
                shutil.copy2(item, directory / item.name)
        with tempfile.TemporaryDirectory() as scratch:
            saved = Path(scratch) / MODEL_FILE
            model.save(saved)
            shutil.copy2(saved, directory / MODEL_FILE)
        return manifest

    return publish(Path(output), new_version_name(), write)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "python -m training.faults",
        "Write deliberately broken copies of a version (for demos and alert tests).",
    )
    sub = parser.add_subparsers(dest="fault", required=True)
    zh = sub.add_parser("zero-head", help="zero the output layer's kernel: constant output")
    zh.add_argument("source", type=Path, help="version directory or base directory (newest)")
    zh.add_argument("--output", type=Path, required=True, help="base directory to publish into")
    args = parser.parse_args(argv)
    try:
        path = zero_head(args.source, args.output)
    except ArtifactError as exc:
        print(f"python -m training.faults: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
