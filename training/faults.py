"""Deliberately broken copies of a published version, for demos and alert tests.

``python -m training.faults zero-head SRC --output BASE`` writes a new version whose output
layer's kernel is zeroed: the model then ignores its input and returns a constant (its bias),
the exact failure the collapse detector must catch.

``python -m training.faults shift SRC --by X --output BASE`` writes a new version whose every
forecast is ``X`` target units higher (the output layer's bias moves by ``X`` over the
inverse transform's scale of each step): a model that still follows its inputs, so the
detectors see nothing, but is wrong by ``X``, what realized accuracy must catch.

``python -m training.faults copy SRC --output BASE`` writes an unmodified copy under a new
version name: a stand-in for a healthy retrained version, to try a rollout.

Each copy is re-sealed with correct checksums, so it passes artifact verification like any real
bad model version would.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from training.artifacts import (
    ArtifactError,
    Artifacts,
    load_artifacts,
    new_version_name,
    publish,
    resolve_version_dir,
)
from training.cli import command_parser
from training.manifest import MANIFEST_FILE, MODEL_FILE, Fault, Manifest


def zero_head(source: str | Path, output: str | Path) -> Path:
    """Publish a copy of ``source`` (a version or base dir) with the head's kernel zeroed."""
    import numpy as np

    artifacts = load_artifacts(source)
    head = artifacts.model.layers[-1]
    kernel, *rest = head.get_weights()
    head.set_weights([np.zeros_like(kernel), *rest])
    return _publish_copy(artifacts, output, "zero-head")


def shift(source: str | Path, output: str | Path, by: float) -> Path:
    """Publish a copy of ``source`` whose forecasts are all ``by`` target units higher.

    A forecast step ``j`` is ``anchor_j + raw_j * step_scale_j`` in scaled units, times the
    target's scale plus its mean, whatever the target mode; so the head's bias moves by
    ``by / (step_scale_j * scale)``."""
    import numpy as np

    artifacts = load_artifacts(source)
    transform = artifacts.transform()
    _, scale = transform.target_affine()
    head = artifacts.model.layers[-1]
    kernel, bias = head.get_weights()
    head.set_weights([kernel, bias + by / (np.asarray(transform.step_scale) * scale)])
    return _publish_copy(artifacts, output, f"shift {by:+g}")


def copy_version(source: str | Path, output: str | Path) -> Path:
    """Publish the files of ``source`` (a version or base dir) unchanged under a new name."""
    version_dir = resolve_version_dir(source)
    manifest = Manifest.load(version_dir)

    def write(directory: Path) -> Manifest:
        for item in version_dir.iterdir():
            if item.is_file() and item.name != MANIFEST_FILE:
                shutil.copy2(item, directory / item.name)
        return manifest

    return publish(Path(output), new_version_name(), write)


def _publish_copy(artifacts: Artifacts, output: str | Path, kind: str) -> Path:
    """Publish ``artifacts`` with its (modified) model, marked as fault ``kind``."""
    manifest = replace(artifacts.manifest, fault=Fault(kind=kind, source_version=artifacts.version))

    def write(directory: Path) -> Manifest:
        for item in artifacts.path.iterdir():
            if item.name not in (MODEL_FILE, MANIFEST_FILE) and item.is_file():
                shutil.copy2(item, directory / item.name)
        with tempfile.TemporaryDirectory() as scratch:
            saved = Path(scratch) / MODEL_FILE
            artifacts.model.save(saved)
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
    sh = sub.add_parser("shift", help="add a constant to every forecast (target units)")
    sh.add_argument("--by", type=float, required=True, help="target units added to forecasts")
    cp = sub.add_parser("copy", help="an unmodified copy under a new version name (healthy)")
    for fault in (zh, sh, cp):
        fault.add_argument("source", type=Path, help="version directory or base directory (newest)")
        fault.add_argument(
            "--output", type=Path, required=True, help="base directory to publish into"
        )
    args = parser.parse_args(argv)
    try:
        if args.fault == "zero-head":
            path = zero_head(args.source, args.output)
        elif args.fault == "copy":
            path = copy_version(args.source, args.output)
        else:
            path = shift(args.source, args.output, args.by)
    except ArtifactError as exc:
        print(f"python -m training.faults: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
