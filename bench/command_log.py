"""commands.sh: every command a bench command ran, in order, each also printed (one writer for
``bench reference`` and ``bench engines``)."""

from __future__ import annotations

import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class Commands:
    """A run's commands.sh: a header naming the invocation, then one line per command."""

    def __init__(self, path: Path, command: str, argv: list[str], note: str = "") -> None:
        """``command``: the bench command (``engines``); ``argv``: its options as given;
        ``note``: one more header line (e.g. the CPU)."""
        self.path = path
        invocation = shlex.join(["python", "-m", "bench", command, *argv])
        path.write_text(f"#!/usr/bin/env bash\n# Commands run by python -m bench {command}, in "
                        f"order, from {REPO}.\n# Invocation: {invocation}\n"
                        + (f"# {note}\n" if note else ""))

    def add(self, cmd: list[str], env_note: str = "") -> None:
        """Append ``cmd`` (shell-quoted, after ``env_note``) and print it."""
        line = (f"{env_note} " if env_note else "") + shlex.join(cmd)
        with open(self.path, "a") as f:
            f.write(line + "\n")
        print(f"== $ {line}", flush=True)
