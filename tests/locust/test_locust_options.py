"""Option defaults live once: the suite's options and the run script's agree with their source."""

from __future__ import annotations

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
