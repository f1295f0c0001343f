"""The chaos run's ground truth (tests/chaoskit.py): every reading observed, where it was first
seen, and what simulated power loss destroyed; and the holes in a capture method's tick grid.

A reading is identified by its key (file_id, record index). `LocalScanner` reads the capture dir
into a `Ledger` (now, or every few hundred ms on a thread); `damage_prog` simulates power loss
on one `.prog` and records exactly which keys it destroyed; `grid_holes` finds the ticks of a
1/f grid that no one ever saw. tests/chaoskit.py's docstring says how the run counts with them.
"""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass
from pathlib import Path

from capsync.runtime.capture_file import CaptureFormatError, read_capture
from tests.processkit import local_capture_files

#: A reading: (file id, record index), as the cloud keys rows.
Key = tuple[str, int]


@dataclass(frozen=True)
class Seen:
    """Where and when a key was first observed."""

    method: str | None
    requested_ns: int | None
    where: str
    cycle: int


@dataclass(frozen=True)
class PowerLossCut:
    """One `.prog` damaged by simulated power loss, with exactly what it destroyed."""

    cycle: int
    path: Path
    mode: str  # "truncate" or "zero-fill"
    size: int
    offset: int
    records_before: int
    records_after: int
    unreadable: bool  # the header no longer reads: the agent will set the file aside as .corrupt


class Ledger:
    """Every key observed, where it was first seen, and the keys simulated power loss destroyed."""

    def __init__(self) -> None:
        self.seen: dict[Key, Seen] = {}
        self.destroyed: dict[Key, Seen] = {}
        self.allowed: dict[Key, Seen] = {}  # forgotten by a real power cut within the durability bound
        self.lock = threading.RLock()  # held by the scanner per pass and by power loss throughout

    def note(self, key: Key, method: str | None, requested_ns: int | None, where: str, cycle: int) -> None:
        """Record that `key` exists (keeping the first sighting; filling in its time if that lacked one)."""
        old = self.seen.get(key)
        if old is None or (old.method is None and method is not None):
            self.seen[key] = Seen(method, requested_ns, old.where if old else where, old.cycle if old else cycle)


def file_keys(path: Path) -> list[tuple[Key, str, int]]:
    """(key, method, requested_ns) of every good record in a capture file; [] if it has no readable
    header (being created, or damaged there) or is gone."""
    try:
        c = read_capture(path)
    except (CaptureFormatError, FileNotFoundError):
        return []
    h = c.header
    method = f"{h.resource_type}/{h.resource_name}/{h.method}"
    return [((h.file_id, i), method, r.requested_ns) for i, r in enumerate(c.records)]


class LocalScanner:
    """Reads the capture dir into the ledger, now (`scan`) or every `interval_s` on a thread."""

    def __init__(self, capture_dir: Path, ledger: Ledger, interval_s: float) -> None:
        self.capture_dir = capture_dir
        self.ledger = ledger
        self.interval_s = interval_s
        self.cycle = 0
        self._known: dict[Path, tuple[int, int]] = {}  # path -> (size, mtime_ns) last read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chaos-scanner", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        """Start the background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread."""
        self._stop.set()
        self._thread.join(30)

    def scan(self, where: str = "local") -> None:
        """Read every local capture file that changed since the last scan into the ledger."""
        with self.ledger.lock:
            present = set()
            for path in local_capture_files(self.capture_dir):
                present.add(path)
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                sig = (st.st_size, st.st_mtime_ns)
                if self._known.get(path) == sig:
                    continue
                self._known[path] = sig
                for key, method, req in file_keys(path):
                    self.ledger.note(key, method, req, where, self.cycle)
            for gone in set(self._known) - present:
                del self._known[gone]

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.scan()
            except BaseException as exc:  # noqa: BLE001 - reported by the run
                self.error = exc
                return


def _readable(path: Path) -> bool:
    try:
        read_capture(path)
        return True
    except (CaptureFormatError, FileNotFoundError):
        return False


def damage_prog(path: Path, rng: random.Random, cycle: int, ledger: Ledger) -> PowerLossCut | None:
    """Simulate power loss on one `.prog`: truncate or zero-fill it from a random offset (usually in
    the last 2 KB, about a second of sensor data; sometimes anywhere). The keys it held before and not after go to
    `ledger.destroyed`. Must only run while no agent runs. None if the file vanished."""
    with ledger.lock:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        readable_before = _readable(path)
        before = file_keys(path)
        for key, method, req in before:
            ledger.note(key, method, req, "before power loss", cycle)
        offset = rng.randint(0, size) if rng.random() < 0.2 else rng.randint(max(0, size - 2048), size)
        mode = rng.choice(("truncate", "zero-fill"))
        if mode == "truncate":
            os.truncate(path, offset)
        else:
            with open(path, "r+b") as f:
                f.seek(offset)
                f.write(b"\0" * (size - offset))
        after = {k for k, _, _ in file_keys(path)}
        for key, method, req in before:
            if key not in after:
                ledger.destroyed[key] = Seen(method, req, str(path), cycle)
        return PowerLossCut(cycle, path, mode, size, offset, len(before), len(after),
                            readable_before and not _readable(path))


@dataclass(frozen=True)
class Hole:
    """Ticks of one capture method's 1/f grid that no one ever saw, between two readings of one run."""

    method: str
    missing: int  # ticks between `before` and `after`
    before: Key
    after: Key
    at_ns: int  # requested time of the first missing tick

    @property
    def inside_a_file(self) -> bool:
        """Both neighbours are consecutive records of one file, so no record is missing from it: the
        collector skipped the ticks (it was held up, e.g. by a slow fsync), nothing was lost."""
        return self.before[0] == self.after[0] and self.after[1] == self.before[1] + 1

    def __str__(self) -> str:
        where = "inside file" if self.inside_a_file else "between files"
        return f"{self.method}: {self.missing} ticks from {self.at_ns} {where} {self.before} -> {self.after}"


def grid_holes(points: dict[str, dict[int, Key]], periods: dict[str, int]) -> list[Hole]:
    """The holes in each method's grid: `points` maps method -> requested time -> key. Consecutive
    times on one 1/f grid with k periods between them miss k - 1 ticks; any other gap starts a new
    grid run (an agent restart)."""
    holes = []
    for method, period in periods.items():
        by_time = points.get(method, {})
        times = sorted(by_time)
        for a, b in zip(times, times[1:]):
            rem = (b - a) % period
            if min(rem, period - rem) <= 2_000 and round((b - a) / period) > 1:
                holes.append(Hole(method, round((b - a) / period) - 1, by_time[a], by_time[b], a + period))
    return holes
