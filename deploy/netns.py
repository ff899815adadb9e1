"""Network namespaces that stand in for machines: one private /24 behind a bridge (needs root).

Every namespace of a run is named ``gll-<pid>-<role>`` (pid of the driving process), so
parallel runs never clash, and a run killed before its clean-up leaves names that the next
run recognises (their pid is gone) and removes. The bridge and every link live inside the
run's own namespaces: the root namespace's interfaces, addresses and routes are never
touched, and nothing in a namespace can reach beyond the bridge.

    ns gll-<pid>-sw      bridge br0 with a port-<role> veth end per role
    ns gll-<pid>-<role>  eth0 (veth to its port on br0), <subnet>.<host>/24, lo up
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from server.engine.procfs import pid_exists, thread_net_namespace

PREFIX = "gll"
NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_OURS = re.compile(rf"^{PREFIX}-(\d+)-")


def ip(*args: str) -> None:
    """Run ``ip ARGS``; raise with its message when it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def listed_namespaces() -> list[str]:
    """Names of the network namespaces that ``ip netns`` knows."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def remove_stale() -> list[str]:
    """Delete gll-<pid>-* namespaces whose run is gone (killed before its clean-up), and end
    the processes it left in them; return the namespaces' names."""
    removed = []
    for name in listed_namespaces():
        match = _OURS.match(name)
        if not match or pid_exists(match.group(1)):
            continue
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        for pid in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        removed.append(name)
    return removed


@dataclass
class Network:
    """A bridge namespace plus one namespace per role, each with an address on the bridge."""

    roles: dict[str, int]  # role -> last octet of its address
    subnet: str = "10.213.0"
    prefix: str = field(default_factory=lambda: f"{PREFIX}-{os.getpid()}")
    created: list[str] = field(default_factory=list)

    def ns(self, role: str) -> str:
        """The namespace name of ``role`` ("sw" is the bridge's)."""
        return f"{self.prefix}-{role}"

    def address(self, role: str) -> str:
        """The IPv4 address of ``role`` on the bridge."""
        return f"{self.subnet}.{self.roles[role]}"

    def create(self) -> None:
        """Create the namespaces, the bridge and a veth link per role (undo with destroy)."""
        switch = self.ns("sw")
        self._add_namespace(switch)
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        for role in self.roles:
            self._add_namespace(self.ns(role))
            # Both ends are made inside namespaces: no interface ever exists in the root one.
            port = f"port-{role}"
            ip("-n", switch, "link", "add", "name", port, "type", "veth", "peer", "name", "eth0",
               "netns", self.ns(role))
            ip("-n", switch, "link", "set", port, "master", "br0", "up")
            ip("-n", self.ns(role), "addr", "add", f"{self.address(role)}/24", "dev", "eth0")
            ip("-n", self.ns(role), "link", "set", "eth0", "up")

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self.created.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def destroy(self) -> None:
        """Delete every namespace this network created (their veth links go with them)."""
        while self.created:
            subprocess.run(["ip", "netns", "del", self.created.pop()], capture_output=True)

    def command(self, role: str, *argv: str) -> list[str]:
        """``argv`` run inside ``role``'s namespace (``ip netns exec`` execs: same pid)."""
        return ["ip", "netns", "exec", self.ns(role), *argv]


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


@contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Open this thread's sockets in ``namespace`` while the block runs, then come back."""
    with open(thread_net_namespace()) as home, open(NETNS_DIR / namespace) as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())
