"""``python -m bench <command>``: one entry point for every measurement of this project.

Each command is a module with ``main(argv: list[str] | None) -> int``, imported only when
it runs (``--help`` stays instant and loads no torch). To add one, add a line to COMMANDS.
Without a command (or with options only), ``python -m bench`` runs the matrix, as it did
before the commands existed (``make bench``). bench/README.md indexes the commands.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """A sub-command: the module whose ``main(argv)`` runs it and the question it answers."""

    module: str
    question: str
    kind: str  # "server": whole-server runs; "micro": one process, no server


COMMANDS: dict[str, Command] = {
    "matrix": Command("bench.driver", "How do the server configurations of bench/matrix.py "
                      "compare under the same closed loop?", "server"),
    "reference": Command("bench.reference", "How does our server compare with llama.cpp's on "
                         "the OpenAI mix?", "server"),
    "engines": Command("bench.engines", "Our server, llama.cpp's and OpenVINO GenAI on the "
                       "same closed loop of equal lengths (c = 1, 8, 32)?", "server"),
    "alternate": Command("bench.alternate", "One request at a time, our server and llama.cpp's "
                         "alternating, each beside a read-rate probe: c = 1 and its floor?",
                         "server"),
    "crosscheck": Command("bench.crosscheck", "Do our load generator and guidellm 0.8.1 agree "
                          "on TTFT p50 and output tok/s at the same rate on one server?",
                          "server"),
    "burst": Command("bench.serving.burst", "How long do N requests at once take against one "
                     "alone; what do startup and memory cost?", "server"),
    "profile": Command("bench.serving.profile", "Where does a worker's time go under steady "
                       "load, and what does load itself cost a step?", "server"),
    "noise": Command("bench.serving.noise", "How far apart are runs of the same configuration "
                     "(the regression gate's bands)?", "server"),
    "loop-lag": Command("bench.serving.loop_lag", "Does the memory sampler slow Locust's "
                        "event loop?", "server"),
    "tenants": Command("bench.tenants", "Does one key's long work hold up another key?",
                       "server"),
    "decode-floor": Command("bench.serving.decode_floor", "How close does each run's decode "
                            "come to the weights-read floor?", "server"),
    "figures": Command("bench.figures", "What are the headline figures the docs quote, from "
                       "which committed runs (docs/figures.md)?", "server"),
    "roofline": Command("bench.roofline", "What are this host's compute and memory limits, "
                        "and the decode limit they set?", "micro"),
    "gemm": Command("bench.micro.gemm", "Which GEMM path is fastest at a decode step's row "
                    "counts?", "micro"),
    "gemm-f16": Command("bench.micro.gemm_f16", "Does the project's fp16 GEMM read weights "
                        "from DRAM faster than fbgemm's fp16, shape by shape?", "micro"),
    "attention": Command("bench.micro.attention", "What does one row's decode attention cost, "
                         "torch's (bf16, widened float32) against the C kernel's?", "micro"),
    "step": Command("bench.micro.step", "What does one engine step cost: by batch (costs), "
                    "by forward path (paths), by weight layout (layouts), compiled (compile)?",
                    "micro"),
    "sampling": Command("bench.micro.sampling", "What does drawing one token cost (greedy, "
                        "temperature, top_p)?", "micro"),
    "sampler-cost": Command("bench.micro.sampler_cost", "What does the worker's memory "
                            "sampler cost its generation throughput?", "micro"),
    "memory": Command("bench.micro.memory", "How much does a worker's memory grow serving one "
                      "mixed 8-row batch?", "micro"),
}
DEFAULT = "matrix"


def usage() -> str:
    """The command list, grouped by kind, each with its question."""
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m bench [COMMAND] [OPTIONS]   (no COMMAND: matrix)", "",
             "One measurement tool; `python -m bench COMMAND --help` for a command's options.",
             "Index: bench/README.md."]
    for kind, title in (("server", "Whole-server runs"), ("micro", "Micro-benchmarks")):
        lines += ["", f"{title}:"]
        lines += [f"  {name:{width}}  {c.question}" for name, c in COMMANDS.items()
                  if c.kind == kind]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the named command with the rest of ``argv``; print the list for -h/--help."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in ("-h", "--help", "help"):
        print(usage(), end="")
        return 0
    name = DEFAULT if not args or args[0].startswith("-") else args.pop(0)
    command = COMMANDS.get(name)
    if command is None:
        print(usage(), end="", file=sys.stderr)
        print(f"\npython -m bench: unknown command {name!r}", file=sys.stderr)
        return 2
    return importlib.import_module(command.module).main(args)
