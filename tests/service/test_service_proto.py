"""The checked-in generated code is what ``make proto`` would generate from ``proto/`` now."""

from __future__ import annotations

import subprocess
import sys

from service_testkit import REPO_ROOT, clean_env

from service.protogen import DEFAULT_OUT


def files_under(root) -> dict:
    return {
        p.relative_to(root): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_proto_code_is_up_to_date(tmp_path):
    # In a subprocess: grpc_tools' protoc segfaults in a process that has imported TensorFlow,
    # as this test session has.
    result = subprocess.run(
        [sys.executable, "-m", "service.protogen", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr

    fresh, checked_in = files_under(tmp_path), files_under(DEFAULT_OUT)
    assert sorted(fresh) == sorted(checked_in), "run `make proto`"
    stale = [str(path) for path, body in fresh.items() if checked_in[path] != body]
    assert stale == [], f"stale generated files {stale}: run `make proto`"
