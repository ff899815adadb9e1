"""Where a run's code came from: the git commit and the versions that shape the numbers."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

VERSIONED = ("torch", "transformers", "tokenizers", "flask", "gunicorn", "locust", "gevent",
             "pandas", "matplotlib")


def versions() -> dict[str, str]:
    """Versions of Python and the installed packages among VERSIONED."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def git_commit(repo: Path = REPO) -> str:
    """HEAD's commit hash ("+dirty" when tracked files changed), or "" outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + ("+dirty" if dirty else "")
