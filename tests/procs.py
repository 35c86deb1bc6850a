"""Whether processes are still running, for the tests that check nothing is left behind."""

import time
from pathlib import Path


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()  # a zombie has died
    except FileNotFoundError:
        return False


def gone(pids, within: float = 15.0) -> bool:
    """True once none of ``pids`` runs, waiting up to ``within`` seconds."""
    deadline = time.monotonic() + within
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


def children(pid: int) -> list[int]:
    """The processes ``pid`` started that still run (from /proc: no procps needed)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended while being read
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out
