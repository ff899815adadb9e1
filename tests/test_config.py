"""Config: defaults, environment on top, a mapping on top of that; bad values stop startup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.gunicorn_process import REPO, GunicornServer
from harness.waiting import wait_until
from server import create_app
from server.config import (
    DEFAULTS,
    GUNICORN_DEFAULTS,
    ConfigError,
    GunicornSettings,
    Settings,
    load_config,
    load_gunicorn_settings,
)
from tests.conftest import server_env

# gunicorn.conf.py's values with no setting in the environment (as before GunicornSettings).
GUNICORN_CONF = {
    "workers": 1, "bind": "127.0.0.1:8000", "preload_app": True, "threads": 48,
    "timeout": 180, "graceful_timeout": 130, "max_requests": 10000,
    "max_requests_jitter": 1000, "keepalive": 30, "pidfile": None, "accesslog": "-",
    "certfile": None, "keyfile": None, "worker_class": "server.web.worker.GracefulThreadWorker",
    "wsgi_app": "server:create_app()",
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting from the shell that runs the tests."""
    for name in (*Settings.model_fields, *GunicornSettings.model_fields):
        monkeypatch.delenv(name, raising=False)


def test_environment_overrides_defaults_with_the_default_type(monkeypatch) -> None:
    for name, value in {"MAX_BATCH_SIZE": "4", "IGNORE_EOS": "yes", "REQUEST_TIMEOUT_S": "2.5",
                        "MODEL": "synthetic:tiny", "ADMIT_PREDICTED": "0"}.items():
        monkeypatch.setenv(name, value)
    config = load_config()
    assert config["MAX_BATCH_SIZE"] == 4
    assert config["IGNORE_EOS"] is True and config["ADMIT_PREDICTED"] is False
    assert config["REQUEST_TIMEOUT_S"] == 2.5
    assert config["MODEL"] == "synthetic:tiny"


def test_mapping_wins_over_environment(monkeypatch) -> None:
    monkeypatch.setenv("MAX_QUEUE", "9")
    assert load_config({"MAX_QUEUE": 3})["MAX_QUEUE"] == 3


def test_defaults_serve_the_heavy_model() -> None:
    assert load_config() == DEFAULTS
    assert DEFAULTS["MODEL"] == "synthetic:gpt2-large"


@pytest.mark.parametrize(("value", "kv_tokens"), [(None, None), ("", None), ("0", 0),
                                                  ("640", 640)])
def test_kv_tokens_unset_or_empty_is_derived_from_kv_cache_mb(monkeypatch, value,
                                                              kv_tokens) -> None:
    """None: server/engine/kv_budget.py sizes it from KV_CACHE_MB and the served model."""
    if value is not None:
        monkeypatch.setenv("KV_TOKENS", value)
    config = load_config()
    assert config["KV_TOKENS"] == kv_tokens and config["KV_CACHE_MB"] == 225


@pytest.mark.parametrize(("name", "value", "says"), [
    ("MAX_BATCH_SIZE", "eight", "valid integer"),
    ("IGNORE_EOS", "ture", "true/false"),  # used to read as false, silently
    ("DTYPE", "fp16",
     "'auto', 'float32', 'float16', 'float16+native', 'bfloat16', 'bfloat16+native', 'int8' "
     "or 'int8+native'"),
    ("REQUEST_TIMEOUT_S", "", "valid number"),
    ("MEMORY_SAMPLE_S", "0", "greater than 0"),  # 0 used to spin the sampling thread
    ("KV_CACHE_MB", "0", "greater than 0"),
    ("KV_CACHE_MB", "lots", "valid number"),
    ("KV_TOKENS", "-1", "greater than or equal to 0"),
])
def test_a_bad_environment_value_names_the_variable(monkeypatch, name, value, says) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"{name}={value!r} \\(environment\\)") as raised:
        load_config()
    assert says in str(raised.value)


def test_a_bad_mapping_value_stops_the_app_factory() -> None:
    with pytest.raises(ConfigError, match=r"MAX_QUEUE='many' \(given\)"):
        create_app({"MAX_QUEUE": "many"})


@pytest.mark.parametrize(("name", "value"), [("MAX_BATCH_SIZE", "eight"),
                                             ("IGNORE_EOS", "ture")])
def test_gunicorn_refuses_to_start_with_a_bad_value(tmp_path: Path, name, value) -> None:
    server = GunicornServer(tmp_path, server_env(tmp_path, **{name: value}), workers=1)
    server.start()
    try:
        wait_until(lambda: not server.alive(), "gunicorn exits on a bad setting",
                   timeout_s=300, detail=server.log_text)
    finally:
        code = server.stop()
    assert code != 0
    assert f"{name}={value!r} (environment)" in server.log_text()


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment without any setting, metrics files in ``tmp_path``."""
    names = {*Settings.model_fields, *GunicornSettings.model_fields}
    env = {k: v for k, v in os.environ.items() if k not in names}
    return {**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), **extra}


def test_gunicorn_conf_keeps_its_defaults_without_flask_or_torch(tmp_path: Path) -> None:
    probe = ("import json, runpy, sys\n"
             "ns = runpy.run_path('gunicorn.conf.py')\n"
             f"print(json.dumps({{k: ns[k] for k in {list(GUNICORN_CONF)!r}}}))\n"
             "print(json.dumps(sorted({'flask', 'torch'} & set(sys.modules))))\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=_clean_env(tmp_path),
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert json.loads(out[0]) == GUNICORN_CONF
    assert json.loads(out[1]) == []  # the master imports them only when it loads the app


@pytest.mark.parametrize(("name", "value", "says"), [
    # Gunicorn parses WEB_CONCURRENCY itself first (its --workers default): "two" dies there
    # with a bare ValueError before this file is read (see the import test below).
    ("WEB_CONCURRENCY", "0", "greater than 0"),
    ("GUNICORN_PRELOAD", "maybe", "true/false"),
    ("GUNICORN_TIMEOUT", "-1", "greater than or equal to 0"),
    ("PORT", "http", "valid integer"),
])
def test_gunicorn_check_config_refuses_a_bad_gunicorn_value(tmp_path: Path, name, value,
                                                            says) -> None:
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                           "--check-config"], cwd=REPO,
                          env=_clean_env(tmp_path, **{name: value}),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"{name}={value!r} (environment)" in done.stderr + done.stdout
    assert says in done.stderr + done.stdout


def test_reading_gunicorn_conf_refuses_web_concurrency_two(tmp_path: Path) -> None:
    read_conf = "import runpy; runpy.run_path('gunicorn.conf.py')"
    done = subprocess.run([sys.executable, "-c", read_conf], cwd=REPO,
                          env=_clean_env(tmp_path, WEB_CONCURRENCY="two"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "ConfigError: invalid Gunicorn setting(s): WEB_CONCURRENCY='two' (environment)" \
        in done.stderr


def test_gunicorn_defaults_are_those_documented() -> None:
    assert load_gunicorn_settings() == GUNICORN_DEFAULTS
