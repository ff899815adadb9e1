"""Every command the README and docs/ show runs as written: each `make` target and variable
exists in the Makefile, and each option of a Python command (scripts, ``python -m``, Locust,
pytest) is one its ``--help`` lists.

Commands come from fenced ``bash`` blocks and from inline code that starts with ``make``,
``python`` or ``locust``. A program this test does not know fails it, so a new kind of
command gets a check rather than a pass.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import COMMANDS as BENCH_COMMANDS

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "results/README.md",
        REPO / "analysis/README.md", REPO / "deploy/README.md"]

# Programs that are not this project's: shown for the reader, not checked here.
OTHER_PROGRAMS = {"export", "systemctl", "curl", "printf", "sha256sum", "redis-server", "nginx",
                  "guidellm"}  # guidellm: in its own venv (docs/api.md shows it was run)
# Subcommands with their own --help.
SUBCOMMANDS = {"analysis": {"compare"}, "server.engine.synthetic": {"build", "params"},
               "bench": set(BENCH_COMMANDS), "bench step": {"costs", "paths", "layouts",
                                                            "compile"}}
# Make variables that pass options on, and the command whose --help must list them.
ARGS_OF = {"loadtest": ["scripts/loadtest.py"], "loadtest-ui": ["scripts/loadtest.py"],
           "scaleout": ["deploy/netns_scaleout.py"], "bench": ["-m", "bench", "matrix"]}
PLACEHOLDERS = {"...", "…"}
# Locust's --help leaves out the options a locustfile adds: print its parser with ours added.
LOCUST_HELP = ("-c", "from locust.argument_parser import get_parser; "
               "from locustfiles.run_options import add_options; "
               "parser = get_parser(); add_options(parser); parser.print_help()")
_FENCED = re.compile(r"```(?:bash|sh)\n(.*?)```", re.S)
_INLINE = re.compile(r"(?<!`)`((?:sudo )?(?:make|python3?|\.venv/bin/python|locust) [^`]+)`")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def command_lines(text: str) -> list[str]:
    """Shell lines of ``text``'s bash blocks (continuations joined) and its inline commands."""
    lines = []
    for block in _FENCED.findall(text):
        lines += block.replace("\\\n", " ").splitlines()
    lines += [" ".join(m.split()) for m in _INLINE.findall(text)]
    return lines


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line: split at && || ; |, without leading VAR=value
    assignments or sudo."""
    commands, current = [], []
    for token in [*shlex.split(line, comments=True), ";"]:
        if token not in ("&&", "||", ";", "|"):
            current.append(token)
            continue
        while current and (_ASSIGNMENT.match(current[0]) or current[0] == "sudo"):
            current.pop(0)
        if current:
            commands.append(current)
        current = []
    return commands


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for line in command_lines(path.read_text()):
            found += [(path.relative_to(REPO).as_posix(), c) for c in simple_commands(line)]
    return found


COMMANDS = documented_commands()


@functools.cache
def help_text(*argv: str) -> str:
    """``python ARGV --help`` run from the repository root (its stdout)."""
    # pytest's own options are what the docs use: its plugins (schemathesis, ...) stay unloaded.
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run([sys.executable, *argv, "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, f"{' '.join(argv)} --help failed:\n{done.stderr[-2000:]}"
    return done.stdout


@functools.cache
def makefile() -> tuple[set[str], set[str]]:
    """The Makefile's targets and variables."""
    text = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))
    variables = set(re.findall(r"^([A-Z_]+) *\?=", text, re.M)) | {"ARGS", "BENCH_ARGS"}
    return targets, variables


def options(args: list[str]) -> list[str]:
    """The option names among ``args`` ("--out=x" -> "--out"), placeholders left out."""
    return [a.split("=", 1)[0] for a in args
            if a.startswith("-") and a not in PLACEHOLDERS and not re.fullmatch(r"-\d+", a)]


def assert_listed(opts: list[str], help_output: str, command: str) -> None:
    for opt in opts:
        assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", help_output), (
            f"{opt} is not an option of `{command}`")


def python_help_argv(args: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """The argv whose --help documents ``python ARGS``, and the arguments to check with it."""
    if args[0] == "-m":
        module, rest = args[1], args[2:]
        assert importlib.util.find_spec(module), f"no module {module}"
        sub: list[str] = []  # e.g. python -m bench step paths: two levels
        while len(rest) > len(sub) and rest[len(sub)] in SUBCOMMANDS.get(
                " ".join([module, *sub]), ()):
            sub.append(rest[len(sub)])
        if module == "pytest":  # its own options; the suite's conftest would import torch
            sub = ["--noconftest"]
            return ("-m", module, *sub), rest
        return ("-m", module, *sub), rest[len(sub):]
    assert (REPO / args[0]).is_file(), f"{args[0]} does not exist"
    return (args[0],), args[1:]


def check_make(argv: list[str], command: str) -> None:
    targets, variables = makefile()
    goals = [a for a in argv[1:] if "=" not in a and not a.startswith("-")]
    assert goals, f"`{command}`: no target"
    for goal in goals:
        assert goal in targets, f"`{command}`: the Makefile has no target {goal}"
    for assignment in (a for a in argv[1:] if "=" in a):
        name, _, value = assignment.partition("=")
        assert name in variables, f"`{command}`: the Makefile does not read {name}"
        if name in ("ARGS", "BENCH_ARGS"):
            script = ARGS_OF[goals[0]]
            assert_listed(options(shlex.split(value)), help_text(*script), command)


def check(argv: list[str]) -> None:
    command = " ".join(argv)
    program = argv[0]
    if program == "make":
        check_make(argv, command)
    elif program in ("python", "python3", ".venv/bin/python"):
        if argv[1] == "-c":
            return
        help_argv, rest = python_help_argv(argv[1:])
        if options(rest):  # a command without options needs only to exist
            assert_listed(options(rest), help_text(*help_argv), command)
    elif program == "locust":
        assert_listed(options(argv[1:]), help_text(*LOCUST_HELP), command)
    elif program == "bash":  # the CI jobs' scripts (deploy/ci/*.sh), run by test_ci_jobs.py
        assert (REPO / argv[1]).is_file(), f"`{command}`: no script {argv[1]}"
    elif program == ".ci/run":
        assert (REPO / ".ci/run").stat().st_mode & 0o111, ".ci/run is not executable"
    else:
        assert program in OTHER_PROGRAMS, f"`{command}`: unknown program {program}; add a check"


def test_the_docs_show_commands_of_every_kind() -> None:
    programs = {argv[0] for _, argv in COMMANDS}
    assert {"make", "python", "locust"} <= programs
    assert len(COMMANDS) > 40


def test_an_unknown_option_is_caught() -> None:
    with pytest.raises(AssertionError, match="--no-such-option"):
        check(["python", "scripts/loadtest.py", "--no-such-option"])
    with pytest.raises(AssertionError, match="no target"):
        check(["make", "MODEL=x"])
    with pytest.raises(AssertionError, match="no-such-target"):
        check(["make", "no-such-target"])


@pytest.mark.parametrize(("doc", "argv"), COMMANDS, ids=[" ".join(a)[:60] for _, a in COMMANDS])
def test_documented_command_runs_as_written(doc: str, argv: list[str]) -> None:
    check(argv)


def test_every_server_module_is_in_the_architecture_table_and_the_readme_picture() -> None:
    """docs/architecture.md's tables name every module of server/, and README's module
    picture does too (a module added without a role in the docs fails here)."""
    architecture = (REPO / "docs" / "architecture.md").read_text()
    readme = (REPO / "README.md").read_text()
    modules = sorted((REPO / "server").rglob("*.py"))
    assert len(modules) > 30
    for path in modules:
        if path.name == "__init__.py" and path.parent.name != "server":
            continue
        compat = path.parent.name == "openai_compat"
        in_table = f"`{path.name}`" in architecture or (compat and "`openai_compat/`"
                                                          in architecture)
        assert in_table, f"{path.relative_to(REPO)} has no row in docs/architecture.md"
        in_picture = path.name in readme or (compat and "openai_compat/" in readme)
        assert in_picture, f"{path.relative_to(REPO)} is not in README's module picture"
