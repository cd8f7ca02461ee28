"""Where a job's time goes: exclusive seconds per kind of work, logged as one line when the job ends.

Code marks its work with ``with charged("forward"):`` (or the ``@charged("statistics")`` decorator); each second
goes to the innermost mark open at the time, the rest to ``other`` (Python between the marks, hooks' set-up,
file I/O). ``startup`` is the process's life before :func:`start` (interpreter and imports). The command line
logs the split as ``emolens profile {json}``, the line ``benchmarks/profile_phases.py`` reads from each job's log.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

KINDS = ("startup", "load", "tokenise", "forward", "statistics", "other")
PREFIX = "emolens profile "

_spent: dict[str, float] = defaultdict(float)
_open: list[str] = []
_mark = time.perf_counter()


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``), or None where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rpartition(")")[2].split()[19])  # field 22: start time in clock ticks after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(uptime - ticks / os.sysconf("SC_CLK_TCK"), 0.0)


def start() -> None:
    """Begin a job's account: clear it, and charge the process's life so far to ``startup``."""
    global _mark
    _spent.clear()
    _open.clear()
    _spent["startup"] = process_age() or 0.0
    _mark = time.perf_counter()


def _charge() -> None:
    global _mark
    now = time.perf_counter()
    _spent[_open[-1] if _open else "other"] += now - _mark
    _mark = now


@contextmanager
def charged(kind: str) -> Iterator[None]:
    """Charge the time inside to ``kind`` (one of :data:`KINDS`), less any inner mark's; also a decorator."""
    assert kind in KINDS, kind
    _charge()
    _open.append(kind)
    try:
        yield
    finally:
        _charge()
        _open.pop()


def report() -> dict[str, float]:
    """Seconds per kind since :func:`start`, and ``total`` (startup included)."""
    _charge()
    spent = {k: round(_spent.get(k, 0.0), 3) for k in KINDS}
    return {**spent, "total": round(sum(spent.values()), 3)}


def line() -> str:
    """The log line of :func:`report`."""
    return PREFIX + json.dumps(report())


def parse(text: str) -> dict[str, float] | None:
    """The last profile line in a log's text, or None if it has none."""
    found = [ln for ln in text.splitlines() if ln.startswith(PREFIX)]
    return json.loads(found[-1][len(PREFIX):]) if found else None
