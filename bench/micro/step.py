"""``python -m bench step MODE``: what one step costs, four ways of asking.

    python -m bench step costs    # the engine's step by batch, and a prompt chunk beside it
    python -m bench step paths    # one decode step through each forward path, interleaved
    python -m bench step layouts  # the model forward alone per weight layout (bf16, int8)
    python -m bench step compile  # the model forward eager against torch.compile

Each mode's options: ``python -m bench step MODE --help``. All time with bench.timing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NamedTuple

from bench.micro import step_costs, step_layouts, step_paths


class Mode(NamedTuple):
    """A mode: its options, its run, and the question it answers."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    question: str


MODES = {
    "costs": Mode(step_costs.add_arguments, step_costs.run,
                  "engine step at 1/4/8 decoding rows, a 128-token chunk beside 7 and alone"),
    "paths": Mode(step_paths.add_arguments, step_paths.run,
                  "one decode step through transformers, torch layers, C layers; GEMMs and "
                  "attention alone"),
    "layouts": Mode(step_layouts.add_layout_arguments, step_layouts.run_layouts,
                    "model forward per weight layout: bf16 Conv1D, bf16 Linear, int8"),
    "compile": Mode(step_layouts.add_compile_arguments, step_layouts.run_compile,
                    "model forward eager against torch.compile(dynamic=True)"),
}


def main(argv: list[str] | None = None) -> int:
    """Parse ``MODE [options]`` and run the mode."""
    parser = argparse.ArgumentParser(prog="python -m bench step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    for name, mode in MODES.items():
        mode.add_arguments(modes.add_parser(name, help=mode.question, description=mode.question))
    args = parser.parse_args(argv)
    return MODES[args.mode].run(args)
