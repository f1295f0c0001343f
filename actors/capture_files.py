"""The capture files of one collector: the open file, a spare opened ahead, and the finishing.

A collector appends every reading to `CaptureFiles.writer` on the event loop (one write, no
fsync). Everything that waits for the disk happens in worker threads, off the collector's path,
so a slow disk never delays a tick:

- a *spare* file (header written and fsynced, no record yet) is kept ready, so switching to a
  new file is an assignment (`take()`), not a create, fsync and directory fsync;
- a full or old file is *retired*: it joins a queue that the background task finishes (fsync,
  rename to `.capture`, directory fsync) while capture goes on in the next file;
- the open file is fsynced every `fsync_interval_s` (the power-loss bound) by the agent's
  FsyncRounds (runtime/fsync_rounds.py: one thread call per interval for every collector), and
  retired once it is `max_file_age_s` old; a file claimed by a round is finished only after it.

`close()` (shutdown) finishes the open file and every retired one, and removes the spare; it
waits for a finish that the background task has in progress. A spare left by a crash holds no
record and is removed by recovery at the next start.
"""

from __future__ import annotations

import collections
import logging
import math
from pathlib import Path
from typing import Awaitable, Callable

import trio

from capsync.runtime.blocking import run_blocking
from capsync.runtime.capture_file import CaptureHeader, CaptureWriter, fsync_dir, recover_prog
from capsync.runtime.faults import FaultPlan
from capsync.runtime.fsync_rounds import FsyncRounds
from capsync.runtime.logs import StateChangeLog

log = logging.getLogger("capsync.collector")

#: Most retired files finished in one worker-thread call (one directory fsync for all of them).
FINISH_BATCH = 32
#: Most files waiting to be finished before the collector waits for the disk instead of opening
#: more (each holds a file descriptor): the disk does not keep up with capture.
MAX_PENDING = 64


class CaptureFiles:
    """Opens, fsyncs and finishes one collector's capture files (see the module docstring).

    `new_header(mime_type)` makes the header of the next file; `on_disk_error(exc)` is told of a
    write-side failure found in the background (the open file is retired already). `run(rounds)`
    is the background task; it must run while the collector captures, with `rounds` running too.
    """

    def __init__(self, capture_dir: Path, name: str, new_header: Callable[[str], CaptureHeader], *,
                 fsync_interval_s: float, max_file_age_s: float, max_file_bytes: int,
                 on_disk_error: Callable[[OSError], None]) -> None:
        self._dir = capture_dir
        self._name = name
        self._new_header = new_header
        self._fsync_interval = fsync_interval_s
        self._rounds: FsyncRounds | None = None
        self._claimed: CaptureWriter | None = None  # the open file, while an fsync round has it
        self._released = trio.Event()  # set (and replaced) when a round hands a file back
        self._max_age = max_file_age_s
        #: The collector calls want_spare() once the open file holds this many bytes (half its
        #: limit), so the spare is made about half a file's life before it is needed, not earlier:
        #: a file's created_ns is when it was made. 0: one capture per file, a spare is always kept.
        self.spare_at = max_file_bytes // 2 if max_file_bytes > 0 else 0
        self._spare_wanted = max_file_bytes <= 0
        self._on_disk_error = on_disk_error
        #: The file readings are appended to; None until the first reading (or after a retire).
        self.writer: CaptureWriter | None = None
        self._spare: CaptureWriter | None = None
        self._spare_mime = ""
        self._retired: collections.deque[CaptureWriter] = collections.deque()
        self._busy = 0  # finishes in progress in a worker thread
        self._poke = trio.Event()
        self._idle = trio.Event()  # set (and replaced) whenever the queue drains
        self._errors = StateChangeLog(log)
        self._closing = False
        self.files_finished = 0
        #: Fault injection (tests): the point `finish`, before a batch of files is finished.
        self.faults: FaultPlan | None = None

    # -- the collector's side (synchronous, on the event loop) ----------------------------------

    def want_spare(self) -> None:
        """The open file is half full: make the spare now."""
        if not self._spare_wanted:
            self._spare_wanted = True
            self._poke.set()

    def take(self, mime_type: str) -> CaptureWriter | None:
        """The spare as the new open file, if one for `mime_type` is ready; else None (then
        `await open(mime_type)`). A spare of another MIME type is retired."""
        spare, self._spare = self._spare, None
        self._spare_wanted = self.spare_at == 0
        self._poke.set()  # a new open file: new times to fsync and finish it
        if spare is None:
            return None
        if self._spare_mime != mime_type:
            self._retired.append(spare)
            return None
        spare.opened_at = trio.current_time()
        self.writer = spare
        return spare

    async def open(self, mime_type: str) -> CaptureWriter:
        """A new open file for `mime_type`, created in a worker thread (no spare was ready)."""
        self.writer = w = await run_blocking(self._create, self._new_header(mime_type))
        w.opened_at = trio.current_time()
        self._poke.set()
        return w

    def retire(self) -> None:
        """Hand the open file to the background task to finish; the next reading opens another."""
        w, self.writer = self.writer, None
        if w is not None:
            self._retired.append(w)
            self._poke.set()

    async def finish_open_file(self) -> None:
        """Retire the open file (if any) and wait until every retired file is finished."""
        self.retire()
        await self._wait_while(lambda: self.pending)

    @property
    def pending(self) -> int:
        """Retired files not finished yet, and background work in progress."""
        return len(self._retired) + self._busy

    async def wait_for_disk(self) -> None:
        """Wait while MAX_PENDING files wait to be finished (the disk is slower than capture)."""
        if len(self._retired) >= MAX_PENDING:
            await self._wait_while(lambda: len(self._retired) >= MAX_PENDING)

    async def _wait_while(self, busy: Callable[[], object]) -> None:
        """Wake the background task and wait, each time it goes idle, until `busy()` is false."""
        while busy():
            idle = self._idle
            self._poke.set()
            await idle.wait()

    # -- the background task ---------------------------------------------------------------------

    # -- the fsync rounds' side (runtime/fsync_rounds.py) -----------------------------------------

    def claim_sync(self) -> CaptureWriter | None:
        """The open file, if it holds bytes not fsynced yet; it is not finished until released."""
        w = self.writer
        if w is None or self._claimed is not None or w.synced_bytes >= w.size_bytes:
            return None
        self._claimed = w
        return w

    def release_sync(self, writer: CaptureWriter, error: BaseException | None) -> None:
        """A round fsynced `writer`, or failed to (then the kernel may have dropped its pages: it is
        never appended to again)."""
        self._claimed = None
        self._released.set()
        self._released = trio.Event()
        if error is not None:
            if self.writer is writer:
                self.retire()
            if isinstance(error, OSError):
                self._on_disk_error(error)

    # -- the background task ---------------------------------------------------------------------

    async def run(self, rounds: FsyncRounds, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a spare ready and finish retired and old files, until cancelled or closed; `rounds`
        fsyncs the open file."""
        self._closing = False  # a collector restarted by its supervisor runs this again after close()
        self._rounds = rounds
        rounds.register(self, self._fsync_interval)
        task_status.started()
        try:
            await self._run()
        finally:
            rounds.unregister(self)

    async def _run(self) -> None:
        while not self._closing:
            if self._retired:
                batch = [self._retired.popleft() for _ in range(min(len(self._retired), FINISH_BATCH))]
                await self._background(self._finish(batch))
                continue
            w = self.writer
            if self._spare is None and w is not None and trio.current_time() >= w.opened_at + self._max_age / 2:
                self._spare_wanted = True
            if self._spare is None and self._spare_wanted:
                await self._background(self._make_spare())
                if self._spare is not None:
                    continue
            w = self.writer
            now = trio.current_time()
            if w is None:
                wake = math.inf
            else:  # the same sum decides and sleeps: a comparison written another way may round otherwise
                wake = w.opened_at + self._max_age
                if now >= wake:
                    self.retire()
                    continue
                if self._spare is None and not self._spare_wanted:
                    wake = min(wake, w.opened_at + self._max_age / 2)
            self._poke = trio.Event()
            with trio.move_on_at(wake):
                await self._poke.wait()

    async def _background(self, work: Awaitable[None]) -> None:
        """Run one piece of background work, counted in `pending` so that close() waits for it."""
        self._busy += 1
        try:
            await work
        finally:
            self._busy -= 1
            if not self._busy:  # waiters check again what they wait for
                self._idle.set()
                self._idle = trio.Event()

    async def _finish(self, writers: list[CaptureWriter]) -> None:
        """Finish `writers` in one worker-thread call, with one directory fsync for all of them (a
        spare that got no record is removed instead)."""
        try:
            while self._claimed is not None and self._claimed in writers:  # an fsync round has it
                await self._released.wait()
            if self.faults is not None:  # a slow disk (HANG) or a bug (RAISE) at the point "finish"
                await self.faults.hit(self._name, "finish")
            outcomes = await run_blocking(_finish_all, writers)
        except BaseException:  # cancelled (or failed) before the thread ran: close() finishes them
            self._retired.extendleft(reversed(writers))
            raise
        for w, outcome in zip(writers, outcomes, strict=True):
            if isinstance(outcome, OSError):
                self._errors.fail("finish", "could not finish a capture file; its good records are kept",
                                  actor=self._name, path=str(w.path), error=str(outcome))
                await run_blocking(_keep_good_prefix, w, self._name)
            elif outcome is not None:
                self._errors.ok("finish", "capture files finish again", actor=self._name)
                log.debug("capture file finished", extra={"actor": self._name, "path": str(outcome),
                                                          "records": w.record_count})
            if w.record_count:
                self.files_finished += 1

    async def _make_spare(self) -> None:
        mime = self.writer.header.mime_type if self.writer is not None else self._spare_mime
        try:
            spare = await run_blocking(self._create, self._new_header(mime))
        except OSError:
            return  # the disk refuses: the collector meets the same error when it opens a file itself
        self._spare, self._spare_mime = spare, mime

    def _create(self, header: CaptureHeader) -> CaptureWriter:
        # No interval fsync in append (that happens in _sync, off the event loop), so the writer's
        # clock only gives opened_at, which the collector sets when the file becomes the open one.
        return CaptureWriter.create(self._dir, header, fsync_interval_s=math.inf,
                                    clock=lambda: 0.0)

    # -- shutdown ---------------------------------------------------------------------------------

    async def close(self) -> None:
        """Finish the open file and every retired one, remove the spare, and wait for a finish in
        progress. Runs in the collector's task (the background task may be cancelled already)."""
        self._closing = True
        if self._rounds is not None:
            self._rounds.unregister(self)
        await self._wait_while(lambda: self._busy)  # the background task finishes what it has begun, then stops
        self.retire()
        if self._spare is not None:
            self._retired.append(self._spare)
            self._spare = None
        while self._retired:
            await self._finish([self._retired.popleft() for _ in range(min(len(self._retired), FINISH_BATCH))])


def _finish_all(writers: list[CaptureWriter]) -> list[Path | OSError | None]:
    """Finish each writer (None for one without records, which is removed; the OSError for one
    that failed), then fsync each directory once."""
    out: list[Path | OSError | None] = []
    dirs: set[Path] = set()
    for w in writers:
        try:
            if w.record_count == 0:
                _discard(w)
                out.append(None)
                continue
            if w.statistics().state != "open":  # broken by a failed write or fsync
                raise OSError(f"{w.path}: the writer is broken")
            out.append(w.finish(sync_dir=False))
            dirs.add(w.path.parent)
        except OSError as exc:
            out.append(exc)
    for d in dirs:
        try:
            fsync_dir(d)
        except OSError as exc:  # the renames may not be durable: say so for the files in that dir
            out = [exc if isinstance(o, Path) and o.parent == d else o for o in out]
    return out


def _discard(w: CaptureWriter) -> None:
    """Close a file that holds no record and remove it."""
    w.close_unfinished()
    w.path.unlink(missing_ok=True)


def _keep_good_prefix(w: CaptureWriter, name: str) -> None:
    """A file that could not be finished: keep its good prefix as `.capture` now if possible,
    else leave the `.prog` for recovery at the next start."""
    w.close_unfinished()
    try:
        if w.path.exists():
            recover_prog(w.path)
    except OSError as exc:
        log.error("could not close a capture file after a disk error; it is recovered at the next start",
                  extra={"actor": name, "path": str(w.path), "error": str(exc)})

