"""python -m bench: the one entry point lists every command, and each command's --help works."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.cli import COMMANDS, main
from bench.micro.step import MODES
from harness.gunicorn_process import REPO


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_every_command_with_its_question() -> None:
    run = bench("--help")
    assert run.returncode == 0, run.stderr[-3000:]
    listed = [line.split()[0] for line in run.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS)
    for name, command in COMMANDS.items():
        assert f"{name}  " in run.stdout and command.question[:40] in run.stdout


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """What ``python -m bench ARGV --help`` prints (in this process: cheap)."""
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_answers_help_with_its_own_name(name: str, capsys) -> None:
    text = help_text(capsys, name)
    # loop-lag takes scripts/loadtest.py's options: its --help is loadtest's.
    prog = "python scripts/loadtest.py" if name == "loop-lag" else f"python -m bench {name}"
    assert text.startswith(f"usage: {prog}")


@pytest.mark.parametrize("mode", list(MODES))
def test_each_step_mode_answers_help(mode: str, capsys) -> None:
    assert help_text(capsys, "step", mode).startswith(f"usage: python -m bench step {mode}")


def test_unknown_command_fails_with_the_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'no-such-command'" in err and "matrix" in err


def test_options_without_a_command_run_the_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    import bench.driver

    monkeypatch.setattr(bench.driver, "main", lambda argv: seen.append(argv) or 0)
    assert main(["--rows", "naive"]) == 0 and main([]) == 0
    assert seen == [["--rows", "naive"], []]
