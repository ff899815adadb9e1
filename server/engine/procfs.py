"""The reads of /proc that psutil does not make, or makes at a higher cost: one home for them.

psutil covers memory (``memory_full_info``), CPU times, status and process trees in general;
what is left is read here: the CPU's fields, a process's one-letter state, its children
without a scan of every pid, its environment as the kernel holds it, this thread's
network namespace, and how much of an address range lies on huge pages.

Standard library only, on purpose: the engine (hardware, shared rows), harness/, deploy/,
bench/ and the Locust suite (which must not carry torch or Flask) all import it, and it
imports nothing of the project, so it can sit under every one of them without a cycle. It
lives in server/engine because the served engine reads /proc too and must not import the
test harness; ``server`` and ``server.engine`` import nothing at package level.
"""

from __future__ import annotations

from pathlib import Path

PROC = Path("/proc")


def cpuinfo_text() -> str:
    """The text of /proc/cpuinfo ("" where there is none; hardware.py parses it)."""
    try:
        return (PROC / "cpuinfo").read_text()
    except OSError:
        return ""


def process_state(pid: int) -> bytes | None:
    """The state letter of ``pid`` from /proc/<pid>/stat (b"R", b"S", b"Z", ...); None if
    it cannot be read (gone, or no /proc here)."""
    try:
        with open(PROC / str(pid) / "stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def pid_exists(pid: int | str) -> bool:
    """Whether /proc lists ``pid`` (a zombie not yet reaped still counts)."""
    return (PROC / str(pid)).exists()


def child_pids(pid: int) -> list[int]:
    """The children of ``pid``, from each of its threads' ``children`` file (a few small
    reads, no scan of every pid as psutil's ``children()`` makes).

    Raises OSError (FileNotFoundError) when ``pid`` is gone.
    """
    children: list[int] = []
    for task in (PROC / str(pid) / "task").iterdir():
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:  # the thread ended while we listed
            continue
    return children


def environ_entries(pid: int) -> list[bytes]:
    """``pid``'s environment as the kernel holds it (b"NAME=value" entries, undecoded).

    Raises OSError when it is gone or not ours to read.
    """
    return (PROC / str(pid) / "environ").read_bytes().split(b"\0")


def thread_net_namespace() -> Path:
    """The handle of this thread's network namespace (open it to come back to it)."""
    return PROC / "thread-self" / "ns" / "net"


def anon_huge_page_bytes(start: int, size: int) -> int:
    """Bytes of [start, start + size) this process holds on anonymous huge pages, from
    /proc/self/smaps (the mappings overlapping the range, whole: a check, not a meter; 0 where
    there is no /proc)."""
    total, inside = 0, False
    try:
        with open(PROC / "self" / "smaps") as smaps:
            for line in smaps:
                head = line.split(None, 1)[0]
                if "-" in head and not head.endswith(":"):
                    low, high = (int(part, 16) for part in head.split("-"))
                    inside = low < start + size and start < high
                elif inside and head == "AnonHugePages:":
                    total += int(line.split()[1]) * 1024
    except OSError:
        return 0
    return total


def file_mappings() -> list[tuple[int, int]]:
    """(start, length) of every mapping of a regular file in /proc/self/maps (pseudo-files
    such as [heap] or [vdso], anonymous and deleted mappings left out; [] where there is no
    /proc)."""
    ranges = []
    try:
        with open(PROC / "self" / "maps") as lines:
            for line in lines:
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or not fields[5].startswith("/") or "(deleted)" in fields[5]:
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((start, end - start))
    except OSError:
        return []
    return ranges


def resident_file_mb() -> float:
    """Resident MB of this process's file-backed pages (Rss less Anonymous, from
    /proc/self/smaps_rollup; 0 where there is none)."""
    fields: dict[str, int] = {}
    try:
        with open(PROC / "self" / "smaps_rollup") as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if value.strip().endswith("kB"):
                    fields[key] = int(value.split()[0])
    except OSError:
        return 0.0
    return (fields.get("Rss", 0) - fields.get("Anonymous", 0)) / 1024
