"""Option defaults live once: the suite's options and the run script's agree with their source."""

from __future__ import annotations

from types import SimpleNamespace

import locust  # noqa: F401  (first: gevent patching, as in the locustfiles)
import pytest
from locust.argument_parser import LocustArgumentParser

from locustfiles.run_options import add_options
from locustfiles.stages import DEFAULT_STAGES, STEP_SWEEP, parse_stages
from locustfiles.user_mix import MIX_CHOICES, MIXES
from scripts import loadtest


def suite_parser() -> LocustArgumentParser:
    parser = LocustArgumentParser()
    add_options(parser)
    return parser


def test_the_stages_default_is_the_step_sweep_in_both_commands() -> None:
    assert parse_stages(DEFAULT_STAGES) == STEP_SWEEP
    assert suite_parser().parse_args([]).stages == DEFAULT_STAGES
    assert loadtest.parse_args([]).stages == DEFAULT_STAGES


@pytest.mark.parametrize("parse", [suite_parser().parse_args, loadtest.parse_args])
def test_both_commands_take_exactly_the_mixes(parse) -> None:
    assert set(MIX_CHOICES) == {*MIXES, "all"}
    assert [parse(["--mix", mix]).mix for mix in MIX_CHOICES] == list(MIX_CHOICES)
    with pytest.raises(SystemExit):
        parse(["--mix", "bogus"])


@pytest.mark.parametrize("parse", [suite_parser().parse_args, loadtest.parse_args])
def test_both_commands_take_the_arrival_options_with_one_default(parse) -> None:
    closed = parse([])
    assert (closed.arrival, closed.rate, closed.burstiness, closed.arrival_seed) == (
        "closed", 1.0, 1.0, 0)
    given = parse(["--arrival", "gamma", "--rate", "0.5", "--burstiness", "2",
                   "--arrival-seed", "9"])
    assert (given.arrival, given.rate, given.burstiness, given.arrival_seed) == (
        "gamma", 0.5, 2.0, 9)
    with pytest.raises(SystemExit):
        parse(["--arrival", "uniform"])


def test_the_run_script_passes_the_arrival_options_to_locust(tmp_path) -> None:
    server = SimpleNamespace(url="http://127.0.0.1:1", pidfile=tmp_path / "g.pid")
    args = loadtest.parse_args(["--arrival", "poisson", "--rate", "0.5", "--processes", "2"])
    command = loadtest.locust_command(args, tmp_path, server)
    at = command.index("--arrival")
    assert command[at:at + 8] == ["--arrival", "poisson", "--rate", "0.5", "--burstiness", "1",
                                  "--arrival-seed", "0"]
    assert "--arrival" not in loadtest.locust_command(loadtest.parse_args([]), tmp_path, server)
