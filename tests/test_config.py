"""Config: defaults, environment on top, a mapping on top of that; bad values stop startup."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.gunicorn_process import GunicornServer
from harness.waiting import wait_until
from server import create_app
from server.config import DEFAULTS, ConfigError, Settings, load_config
from tests.conftest import server_env


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting from the shell that runs the tests."""
    for name in Settings.model_fields:
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


@pytest.mark.parametrize(("name", "value", "says"), [
    ("MAX_BATCH_SIZE", "eight", "valid integer"),
    ("IGNORE_EOS", "ture", "true/false"),  # used to read as false, silently
    ("DTYPE", "fp16", "'auto', 'float32', 'float16', 'bfloat16', 'bfloat16+native' or 'int8'"),
    ("REQUEST_TIMEOUT_S", "", "valid number"),
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
