"""Versions published into a real ``python -m service``'s base directory under load from 16
clients: a healthy one promoted, a collapsed one rejected, a tampered one ignored, a rollback by
ModelAdmin, and not one non-OK response (``python -m benchmarks.rollout``, which also measures
the README's rollout figures)."""

from __future__ import annotations

import pytest

from benchmarks.rollout import run_rollout

pytestmark = pytest.mark.slow

CLIENTS = 16


def test_rollout_under_load_loses_no_call(trained_version, tmp_path):
    result = run_rollout(trained_version, tmp_path, clients=CLIENTS, warm_seconds=2.0)
    log = (tmp_path / "service.log").read_text(errors="replace")[-3000:]

    assert result.calls > 500, (result, log)
    assert result.codes == {"OK": result.calls}, (result.codes, log)
    assert result.collapsed_rejected, (result, log)
    assert result.collapsed_reason == "collapsed", (result, log)
    assert result.tampered_ignored
    assert result.rolled_back
    statuses = sorted(result.versions.values())
    assert statuses == ["available", "ignored", "rejected", "serving"], result.versions
    assert result.publish_to_promotion_seconds < 120
