"""Which user classes a run uses: ``--mix`` for this server, ``--target openai`` for others.

``locust -f locustfiles`` finds every user class in the folder; a run keeps those of its mix:

=========  ====================================================================
tasks      (default) PromptUser, SummarizeUser, QAUser: the three task routes, JSON
streaming  the task routes streamed, plus streamed /v1 completions and chat
openai     the /v1 routes: completions and chat, whole and streamed
all        every user class but the workload users
=========  ====================================================================

``--target openai`` means the host is some OpenAI-compatible server, not GPT Load Lab: only
the ``openai`` mix makes sense there (it is forced), and there are no memory headers or
/metrics to sample, so memory.csv is not written, unless ``--server-pidfile`` names an
existing pidfile of a server on this machine (bench/reference.py's llama-server): then its
processes are read from /proc as for Gunicorn. User classes named on the command line
(``locust -f locustfiles StreamingChatUser``) override the mix.

``--workload`` other than ``mix`` replaces the mix by that workload's user
(locustfiles/workloads.py ``WORKLOAD_USERS``), for either target.
"""

from __future__ import annotations

from typing import Any

from locustfiles.workloads import WORKLOAD_USERS

MIXES: dict[str, tuple[str, ...]] = {
    "tasks": ("PromptUser", "SummarizeUser", "QAUser"),
    "streaming": ("StreamingPromptUser", "StreamingSummarizeUser", "StreamingQAUser",
                  "StreamingCompletionUser", "StreamingChatUser"),
    "openai": ("CompletionUser", "ChatUser", "StreamingCompletionUser", "StreamingChatUser"),
}
# --mix choices (the suite's option and scripts/loadtest.py's): the mixes above, or every class.
MIX_CHOICES = (*MIXES, "all")
TARGETS = ("lab", "openai")


def is_openai_target(options: Any) -> bool:
    """True when the host is an arbitrary OpenAI-compatible server."""
    return getattr(options, "target", "lab") == "openai"


def mix_names(options: Any) -> tuple[str, ...] | None:
    """The user class names of the run's mix; None = keep every class (``all``)."""
    workload = getattr(options, "workload", "mix") or "mix"
    if workload in WORKLOAD_USERS:
        return WORKLOAD_USERS[workload]
    mix = "openai" if is_openai_target(options) else getattr(options, "mix", "tasks")
    return MIXES.get(mix)


def select_users(environment: Any) -> None:
    """Keep only the mix's classes in ``environment.user_classes`` (named classes win)."""
    options = environment.parsed_options
    names = mix_names(options)
    if getattr(options, "user_classes", None):
        return
    if names is None:  # ``all``: every class but the workload users (they need --workload)
        workload_users = {name for users in WORKLOAD_USERS.values() for name in users}
        names = tuple(c.__name__ for c in environment.user_classes
                      if c.__name__ not in workload_users)
    kept = [cls for cls in environment.user_classes if cls.__name__ in names]
    if not kept:
        raise ValueError(f"no user class of the mix {names} was loaded; use -f locustfiles")
    environment.user_classes[:] = kept
