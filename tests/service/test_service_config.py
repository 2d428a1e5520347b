"""Settings: every flag has a FORECAST_* twin, a flag beats its variable, bad values exit 2."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from service_testkit import REPO_ROOT, clean_env

from service.config import Settings, env_name, load_settings


def test_settings_defaults_without_flags_or_env():
    settings = load_settings([], env={})

    assert settings == Settings()
    assert settings.address == "0.0.0.0:50051"
    assert settings.metrics_port == 9464
    assert settings.max_windows_per_request == 1024
    assert settings.grace_seconds == 30.0
    assert settings.batch_buckets == (1, 2, 4, 8, 16, 32, 64, 128)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("artifacts", "/srv/models", Path("/srv/models")),
        ("address", "127.0.0.1:0", "127.0.0.1:0"),
        ("metrics_port", "-1", -1),
        ("metrics_address", "127.0.0.1", "127.0.0.1"),
        ("max_wait_ms", "2.5", 2.5),
        ("max_queue_windows", "2048", 2048),
        ("max_windows_per_request", "3", 3),
        ("max_message_bytes", "2048", 2048),
        ("max_concurrent_rpcs", "7", 7),
        ("grace_seconds", "0.5", 0.5),
        ("jit_compile", "false", False),
        ("jit_compile", "0", False),
        ("auth_token", "tok en", "tok en"),
        ("log_level", "DEBUG", "DEBUG"),
    ],
)
def test_settings_env_twin_sets_field(name, text, expected):
    settings = load_settings([], env={env_name(name): text})

    assert getattr(settings, name) == expected


def test_settings_env_twins_set_batching_together():
    env = {"FORECAST_BATCH_BUCKETS": "8,2,2", "FORECAST_MAX_BATCH_SIZE": "8"}

    settings = load_settings([], env=env)

    assert settings.batch_buckets == (2, 8)
    assert settings.max_batch_size == 8


def test_settings_env_twins_set_tls_files(tmp_path):
    cert, key, ca = (tmp_path / n for n in ("cert.pem", "key.pem", "ca.pem"))
    for path in (cert, key, ca):
        path.write_text("pem")
    env = {
        "FORECAST_TLS_CERT": str(cert),
        "FORECAST_TLS_KEY": str(key),
        "FORECAST_TLS_CLIENT_CA": str(ca),
    }

    settings = load_settings([], env=env)

    assert (settings.tls_cert, settings.tls_key, settings.tls_client_ca) == (cert, key, ca)


def test_settings_flag_beats_env():
    env = {"FORECAST_GRACE_SECONDS": "3", "FORECAST_ADDRESS": "10.0.0.1:1"}

    settings = load_settings(["--grace-seconds", "9"], env=env)

    assert settings.grace_seconds == 9.0
    assert settings.address == "10.0.0.1:1"


def test_settings_empty_env_value_keeps_default():
    assert load_settings([], env={"FORECAST_MAX_BATCH_SIZE": ""}).max_batch_size == 128


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--max-batch-size", "many"], {}, "--max-batch-size"),
        ([], {"FORECAST_MAX_BATCH_SIZE": "many"}, "FORECAST_MAX_BATCH_SIZE"),
        ([], {"FORECAST_JIT_COMPILE": "maybe"}, "FORECAST_JIT_COMPILE"),
        (["--batch-buckets", "0,4"], {}, "--batch-buckets"),
        (["--log-level", "LOUD"], {}, "--log-level"),
        (["--max-batch-size", "256"], {}, "--batch-buckets must include a bucket"),
        (["--grace-seconds", "-1"], {}, "--grace-seconds"),
        (["--max-windows-per-request", "0"], {}, "--max-windows-per-request"),
        (["--tls-key", "/nonexistent/key.pem"], {}, "--tls-cert and --tls-key go together"),
        (["--no-such-flag"], {}, "unrecognized arguments"),
    ],
)
def test_settings_bad_value_exits_2_with_one_line(argv, env, message, capsys):
    with pytest.raises(SystemExit) as caught:
        load_settings(argv, env=env)

    assert caught.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1
    assert stderr.startswith("python -m service: error: ")
    assert message in stderr


def test_settings_env_value_outside_choices_exits_2(capsys):
    with pytest.raises(SystemExit) as caught:
        load_settings([], env={"FORECAST_LOG_LEVEL": "LOUD"})

    assert caught.value.code == 2
    assert "FORECAST_LOG_LEVEL" in capsys.readouterr().err


def test_settings_missing_tls_file_is_refused(tmp_path, capsys):
    key = tmp_path / "key.pem"
    key.write_text("pem")

    with pytest.raises(SystemExit) as caught:
        load_settings(["--tls-cert", str(tmp_path / "absent.pem"), "--tls-key", str(key)], env={})

    assert caught.value.code == 2
    assert "no such file" in capsys.readouterr().err


def test_service_help_lists_every_flag():
    result = subprocess.run(
        [sys.executable, "-m", "service", "--help"],
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())  # argparse wraps lines
    for f in fields(Settings):
        assert f"--{f.name.replace('_', '-')} " in help_text
        assert f"[{env_name(f.name)}]" in help_text


def test_settings_reject_request_limit_above_queue_limit(capsys):
    with pytest.raises(SystemExit) as exc:
        load_settings(["--max-windows-per-request", "100", "--max-queue-windows", "50"], env={})

    assert exc.value.code == 2
    assert "cannot exceed --max-queue-windows" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("cores", "memory_gib", "expected"),
    [
        (2, 23.5, 2),  # this machine: one per core
        (16, 4.5, 4),  # a 16-core node in a pod limited to 4.5 GiB: memory decides
        (4, 0.5, 1),  # never fewer than one
        (8, 0.0, 8),  # memory unknown: cores decide
    ],
)
def test_automatic_worker_count_is_cores_capped_by_memory(cores, memory_gib, expected):
    from service.workers import auto_workers

    count, reason = auto_workers(cores, int(memory_gib * 2**30))

    assert count == expected
    assert f"{cores} usable core(s)" in reason


def test_workers_flag_is_validated_and_has_an_env_twin(capsys):
    assert load_settings(["--workers", "3"], env={}).workers == 3
    assert load_settings([], env={"FORECAST_WORKERS": "1"}).workers == 1
    assert load_settings([], env={}).workers == 0  # automatic
    with pytest.raises(SystemExit) as exit_info:
        load_settings(["--workers", "-1"], env={})
    assert exit_info.value.code == 2
    assert "--workers must be >= 0" in capsys.readouterr().err
