"""Readings from /proc for a server process: resident memory (VmRSS now, VmHWM, the
kernel's high-water mark of VmRSS), a sampler that keeps the largest VmRSS seen while it
runs, and the CPU time of a process group."""

from __future__ import annotations

import os
import threading

MIB = 1024 * 1024


def status(pid: int, fds: bool = True) -> dict:
    """VmRSS and VmHWM in MiB, and the number of open file descriptors (None unless `fds`)."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024  # kB -> MiB
    values["fds"] = None
    if fds:
        try:
            values["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return {"rss_mib": values.get("VmRSS"), "hwm_mib": values.get("VmHWM"), "fds": values["fds"]}


class Sampler:
    """Samples VmRSS every `interval` seconds on a thread: `with Sampler(pid) as s: ...`,
    then `s.max_rss_mib`, `s.max_fds`, `s.samples`. Descriptors are counted on every
    `FD_EVERY`th sample and at the end only: listing 2 000 of them every 10 ms costs the
    load generator's CPU time in the very runs being compared."""

    FD_EVERY = 10

    def __init__(self, pid: int, interval: float = 0.01):
        self.pid = pid
        self.interval = interval
        self.max_rss_mib = 0.0
        self.max_fds = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(fds=True)

    def _sample(self, fds: bool = False) -> None:
        try:
            s = status(self.pid, fds=fds or self.samples % self.FD_EVERY == 0)
        except OSError:
            return
        self.samples += 1
        self.max_rss_mib = max(self.max_rss_mib, s["rss_mib"] or 0.0)
        self.max_fds = max(self.max_fds, s["fds"] or 0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every process in process group `pgid` (a server started
    in its own session: the proxy's threads, or nginx's master and workers)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # rest[0] is the state (field 3): pgrp is field 5, utime 14, stime 15.
        if int(rest[2]) == pgid:
            total += int(rest[11]) + int(rest[12])
    return total / CLOCK_TICKS


def _pgrp(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def context_switches(pgid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of every thread in process group `pgid`."""
    voluntary = involuntary = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or _pgrp(pid) != pgid:
            continue
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches"):
                            voluntary += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches"):
                            involuntary += int(line.split()[1])
            except OSError:
                continue
    return voluntary, involuntary
