"""Config: defaults, environment on top, a mapping on top of that."""

from server.config import DEFAULTS, load_config


def test_environment_overrides_defaults_with_the_default_type() -> None:
    config = load_config(environ={"MAX_BATCH_SIZE": "4", "IGNORE_EOS": "yes",
                                  "REQUEST_TIMEOUT_S": "2.5", "MODEL": "synthetic:tiny"})
    assert config["MAX_BATCH_SIZE"] == 4
    assert config["IGNORE_EOS"] is True
    assert config["REQUEST_TIMEOUT_S"] == 2.5
    assert config["MODEL"] == "synthetic:tiny"


def test_mapping_wins_over_environment() -> None:
    config = load_config({"MAX_QUEUE": 3}, environ={"MAX_QUEUE": "9"})
    assert config["MAX_QUEUE"] == 3


def test_defaults_serve_the_heavy_model() -> None:
    assert load_config(environ={}) == DEFAULTS
    assert DEFAULTS["MODEL"] == "synthetic:gpt2-large"
