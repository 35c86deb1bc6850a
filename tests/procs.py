"""Whether processes are still running, for the tests that check nothing is left behind."""

import time


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
