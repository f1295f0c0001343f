"""The sync scheduler: at start, every `sync_interval_mins` and on request, uploads every ready file.

A pass first asks the collectors to finish their open files, then brings its index of ready
files up to date (runtime/ready_index.py: only directories that changed are read again, so a
pass over a big backlog costs what changed since the last one) and uploads them oldest first,
at most `maximum_num_sync_threads` at a time and never two at once for one file. Each file that
fails backs off on its own: about 1 s, doubling, capped at one hour (then hourly), without
holding up other files. When the cloud is unreachable the rest of the pass is skipped (the files
not tried keep their schedule), and that is logged once per change of state; once an upload
succeeds again, files that were waiting only for the cloud are due at once. A file the cloud
refuses for good is moved to `<capture_dir>/failed/`, with a report of why beside it
(`<name>.set-aside.json`; `capsync backlog` lists them and `--retry-failed` puts them back). The backlog in
`statistics()` is the index's: it goes down as each file syncs or is set aside, and up as each
pass finds new ready files (a long pass refreshes the index every interval meanwhile). Capture
never waits for sync.

The age of the oldest file waiting to sync (`oldest_unsynced_age_s`) is the index's oldest
modification time. When it passes max(10 x sync_interval_mins, 3 minutes), each pass warns, at
most once every STALE_WARN_EVERY_S; while the selective syncer deliberately pauses sync the same
line is logged at INFO instead (the data is old because the user asked for it).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import trio

from capsync.actors.uploader import UnverifiedCommit, upload_file
from capsync.runtime.backoff import Backoff
from capsync.runtime.capture_file import CaptureFormatError
from capsync.runtime.cloud_client import CloudClient, CloudRefusedCredentials, CloudUnavailable, UploadRejected
from capsync.runtime.logs import StateChangeLog
from capsync.runtime.ready_index import Entry, ReadyIndex, lstat_of
from capsync.runtime.salvage import salvage_damaged_tail
from capsync.runtime.sync_files import FAILED_DIR, SyncFile, set_aside
from capsync.runtime.sync_protocol import FileKind
from capsync.runtime.blocking import run_blocking
from capsync.runtime.faults import FaultPlan

log = logging.getLogger("capsync.sync")

#: Per-file retry schedule, as documented: exponential up to one hour, then hourly.
FILE_BACKOFF = Backoff(initial=1.0, factor=2.0, cap=3600.0, jitter=0.1)
#: How long a pass waits for collectors to finish their open files before going on without them.
FINISH_WAIT_S = 2.0
#: Data waiting to sync is stale past max(STALE_INTERVALS x the sync interval, STALE_FLOOR_S) ...
STALE_INTERVALS, STALE_FLOOR_S = 10, 180.0
#: ... and is warned about at most this often.
STALE_WARN_EVERY_S = 300.0


#: Why a pass is skipped when the selective syncer deliberately says no.
PAUSED = "the selective syncer says should_sync is false"


@dataclass(frozen=True)
class PassResult:
    """What one sync pass did."""

    started_ns: int
    duration_s: float
    uploaded: int
    bytes_sent: int
    failed: int
    waiting: int  # ready files skipped because they are backing off or the cloud is down
    cloud_error: str | None
    skipped: str | None = None  # why the whole pass was skipped (the selective syncer said no)

    @property
    def summary(self) -> str:
        """One line for logs and the CLI."""
        if self.skipped:
            return f"skipped: {self.skipped}"
        s = f"uploaded {self.uploaded} files ({self.bytes_sent} bytes), {self.failed} failed, {self.waiting} waiting"
        return s + (f"; cloud unavailable: {self.cloud_error}" if self.cloud_error else "")


@dataclass(frozen=True)
class SyncStats:
    """A snapshot of sync for `capsync status`, the demo and tests."""

    cloud_url: str
    backlog_files: int
    backlog_bytes: int
    in_flight: int
    files_synced: int
    bytes_sent: int
    set_aside: int
    passes: int
    skipped_by_selective_syncer: int
    last_pass: PassResult | None
    cloud_error: str | None
    #: "Committed" answers that did not state exactly the bytes on disk; each kept its file.
    unverified_commits: int = 0
    #: Capture files damaged after they were finished whose intact records were synced, their
    #: damaged tails kept in failed/ with a report (runtime/salvage.py).
    salvaged: int = 0
    #: The last failure was the cloud refusing this part's id/secret (cloud_error says how), not an outage.
    credentials_refused: bool = False
    #: When a pass last uploaded a file (wall clock ns); None before the first.
    last_upload_ns: int | None = None
    #: Seconds since the oldest file waiting to sync was last modified; None when none waits.
    oldest_unsynced_age_s: float | None = None
    #: When data waiting counts as stale (and is warned about): max(10 x interval, 180 s).
    stale_after_s: float = STALE_FLOOR_S
    #: Upload attempts that failed since start (cloud down, refused, local trouble); each is retried.
    upload_failures: int = 0


@dataclass
class _Retry:
    attempts: int = 0
    not_before: float = 0.0
    errors: list[str] = field(default_factory=list)
    cloud_down: bool = False  # the last failure was the cloud's, not this file's


class SyncScheduler:
    """Runs sync passes for one agent against one cloud.

    `capture_dirs` returns the dirs to look in (the current capture dir and any earlier ones that
    still hold data); `finish_open_files` asks every collector to finish its open file;
    `should_sync` (the selective syncer) is asked before each pass, and False skips the pass.
    """

    def __init__(
        self,
        client: CloudClient,
        *,
        capture_dirs: Callable[[], list[Path]],
        sync_paths: list[Path],
        interval_s: float,
        max_uploads: int,
        finish_open_files: Callable[[], Awaitable[None]] | None = None,
        should_sync: Callable[[], Awaitable[bool]] | None = None,
        wall_time: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._capture_dirs = capture_dirs
        self._sync_paths = sync_paths
        self.interval_s = interval_s
        self._limiter = trio.CapacityLimiter(max(1, max_uploads))
        self._finish_open_files = finish_open_files
        self.should_sync = should_sync
        self._skipped = 0
        #: Fault injection (tests): the scheduler's point `pass`; handed on to every uploader.
        self.faults: FaultPlan | None = None
        #: The uploader; a test may swap in another one (e.g. a deliberately broken one).
        self.upload = upload_file
        self._selective_log = StateChangeLog(log)
        self._wall_time = wall_time
        self._index = ReadyIndex()
        self._retries: dict[str, _Retry] = {}  # by file path
        self._in_flight: set[Path] = set()
        self._cloud_log = StateChangeLog(log)
        self._cloud_error: str | None = None
        self._credentials_refused = False
        self._last_upload_ns: int | None = None
        self._trigger = trio.Event()
        self._pass_done = trio.Event()
        self._passes = self._synced = self._bytes = self._set_aside = self._unverified = self._salvaged = 0
        self._upload_failures = 0
        self._commit_log = StateChangeLog(log)
        self._last: PassResult | None = None
        self._started = False
        self._stale_warned_at: float | None = None  # trio time of the last stale-data line

    def is_uploading(self, path: Path) -> bool:
        """True while `path` is being uploaded."""
        return path in self._in_flight

    def set_max_uploads(self, n: int) -> None:
        """Change how many files upload at once; applies from the next upload started."""
        self._limiter.total_tokens = max(1, n)

    async def sync_now(self) -> PassResult:
        """Run a pass as soon as possible and return its result once it has finished."""
        done = self._pass_done
        self._trigger.set()
        await done.wait()
        assert self._last is not None
        return self._last

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run a pass every `interval_s` (and whenever asked) until cancelled."""
        task_status.started()
        try:
            # A pass at once at the first start: a robot back online starts on its backlog. After a
            # crash, wait the interval as usual, so a crash loop is not a tight one.
            first, self._started = not self._started, True
            while True:
                if not first:
                    with trio.move_on_after(self.interval_s):
                        await self._trigger.wait()
                first = False
                self._trigger = trio.Event()
                done, self._pass_done = self._pass_done, trio.Event()
                self._last = await self._pass()
                done.set()
        finally:
            with trio.move_on_after(2, shield=True):
                await self._client.aclose()

    def statistics(self) -> SyncStats:
        """Counters since start, and the backlog: ready files not synced yet, as of now."""
        return SyncStats(
            cloud_url=self._client.base_url,
            backlog_files=self._index.files,
            backlog_bytes=self._index.bytes,
            in_flight=len(self._in_flight),
            files_synced=self._synced,
            bytes_sent=self._bytes,
            set_aside=self._set_aside,
            salvaged=self._salvaged,
            passes=self._passes,
            skipped_by_selective_syncer=self._skipped,
            last_pass=self._last,
            cloud_error=self._cloud_error,
            unverified_commits=self._unverified,
            credentials_refused=self._credentials_refused,
            last_upload_ns=self._last_upload_ns,
            oldest_unsynced_age_s=self.oldest_unsynced_age_s(),
            stale_after_s=self.stale_after_s,
            upload_failures=self._upload_failures,
        )

    @property
    def stale_after_s(self) -> float:
        """How old the oldest unsynced file may get before it is warned about."""
        return max(STALE_INTERVALS * self.interval_s, STALE_FLOOR_S)

    def oldest_unsynced_age_s(self) -> float | None:
        """Seconds since the oldest file waiting to sync was modified; None when nothing waits."""
        oldest = self._index.oldest_mtime_ns()
        return None if oldest is None else max(0.0, self._wall_time() - oldest / 1e9)

    def _check_stale(self, paused: bool) -> None:
        """Warn (at most every STALE_WARN_EVERY_S) when the oldest unsynced file is stale; at INFO
        while the selective syncer deliberately pauses sync."""
        age = self.oldest_unsynced_age_s()
        if age is None or age <= self.stale_after_s:
            return
        now = trio.current_time()
        if self._stale_warned_at is not None and now - self._stale_warned_at < STALE_WARN_EVERY_S:
            return
        self._stale_warned_at = now
        fields = {"oldest_unsynced_age_s": round(age, 1), "stale_after_s": self.stale_after_s,
                  "backlog_files": self._index.files, "cloud_error": self._cloud_error}
        if paused:
            log.info("data waiting to sync is old while the selective syncer pauses sync", extra=fields)
        else:
            log.warning("data waiting to sync is getting old: the oldest unsynced file has waited longer than "
                        "10 sync intervals (at least 3 minutes)", extra=fields)

    async def _pass(self) -> PassResult:
        started_ns, t0 = time.time_ns(), trio.current_time()
        if self.faults is not None:
            await self.faults.hit("scheduler", "pass")
        skip = await self._selective_skip()
        if skip is not None:
            self._skipped += 1
            self._passes += 1
            log.debug("sync pass skipped", extra={"reason": skip})
            await run_blocking(self._index.refresh, self._capture_dirs(), self._sync_paths, self._wall_time())
            self._check_stale(paused=skip == PAUSED)
            return PassResult(started_ns, 0.0, 0, 0, 0, self._index.files, self._cloud_error, skipped=skip)
        if self._finish_open_files is not None:
            with trio.move_on_after(FINISH_WAIT_S):
                await self._finish_open_files()
        capture_dirs = self._capture_dirs()
        scan = await run_blocking(self._index.refresh, capture_dirs, self._sync_paths, self._wall_time())
        log.debug("sync pass found the ready files", extra={"backlog": self._index.files, "dirs_listed":
                                                             scan.dirs_listed, "files_statted": scan.files_statted})
        self._retries = {p: r for p, r in self._retries.items() if self._index.holds(p)}
        ready = self._index.files
        now = trio.current_time()
        counts = {"uploaded": 0, "bytes": 0, "failed": 0, "gone": 0}
        outage = trio.Event()
        pass_error: list[str] = []
        async with trio.open_nursery() as nursery:
            rescans = trio.CancelScope()
            nursery.start_soon(self._refresh_during_pass, rescans)
            try:
                for entry in self._index.oldest_first():
                    path = self._index.path_of(entry)
                    retry = self._retries.get(path)
                    if retry is not None and retry.not_before > now:
                        continue
                    await self._limiter.acquire_on_behalf_of(entry)
                    handed_over = False  # to the upload task, which releases the slot when done
                    try:
                        if outage.is_set():
                            break
                        st = await run_blocking(lstat_of, path)
                        f = self._index.sync_file(entry, st, self._wall_time())
                        if f is None:  # vanished, or changed and not quiet yet: the index has followed
                            counts["gone"] += 1
                            continue
                        self._in_flight.add(f.path)
                        nursery.start_soon(self._upload_one, entry, f, capture_dirs, counts, outage, pass_error)
                        handed_over = True
                    finally:  # also when a crash elsewhere cancels this loop at the stat
                        if not handed_over:
                            self._limiter.release_on_behalf_of(entry)
            finally:
                rescans.cancel()
        result = PassResult(
            started_ns=started_ns,
            duration_s=trio.current_time() - t0,
            uploaded=counts["uploaded"],
            bytes_sent=counts["bytes"],
            failed=counts["failed"],
            waiting=max(0, ready - counts["uploaded"] - counts["failed"] - counts["gone"]),
            cloud_error=pass_error[0] if pass_error else None,
        )
        self._passes += 1
        self._upload_failures += counts["failed"]
        if result.uploaded or result.failed:
            log.info("sync pass", extra={"result": result.summary})
        self._check_stale(paused=False)
        return result

    async def _refresh_during_pass(self, scope: trio.CancelScope) -> None:
        """While a long pass (a big backlog) dispatches, refresh the index every interval, so the
        backlog figure counts files finished meanwhile; they are uploaded from the next pass on."""
        with scope:
            while True:
                await trio.sleep(self.interval_s)
                await run_blocking(self._index.refresh, self._capture_dirs(), self._sync_paths, self._wall_time())

    async def _upload_one(self, entry: Entry, f: SyncFile, capture_dirs: list[Path], counts: dict,
                          outage: trio.Event, pass_error: list[str]) -> None:
        retry: SyncFile | None = f
        try:
            while retry is not None:
                retry = await self._attempt(entry, retry, capture_dirs, counts, outage, pass_error)
        finally:
            self._in_flight.discard(f.path)
            self._limiter.release_on_behalf_of(entry)

    async def _attempt(self, entry: Entry, f: SyncFile, capture_dirs: list[Path], counts: dict,
                       outage: trio.Event, pass_error: list[str]) -> SyncFile | None:
        """Upload `f` once and count how it went; the file to upload at once instead (a damaged
        capture file cut back to its intact records), else None."""
        try:
            result = await self.upload(self._client, f, faults=self.faults)
        except CloudUnavailable as exc:
            self._note_failure(f, str(exc), cloud_down=True)
            counts["failed"] += 1
            self._cloud_error = str(exc)
            self._credentials_refused = isinstance(exc, CloudRefusedCredentials)
            pass_error.append(str(exc))
            outage.set()
            self._cloud_log.fail("cloud", "the cloud refused this part's credentials; backing off"
                                 if self._credentials_refused else "cloud unavailable; backing off",
                                 cloud=self._client.base_url, error=str(exc))
        except UnverifiedCommit as exc:  # the file is kept; retried with backoff like any failure
            counts["failed"] += 1
            self._unverified += 1
            self._note_failure(f, str(exc))
            self._commit_log.fail("commit", "the cloud's commit answer does not match the local file; "
                                  "keeping it (see unverified_commits in sync statistics)",
                                  cloud=self._client.base_url, path=str(f.path), reason=exc.reason)
        except UploadRejected as exc:
            retry = await self._salvage(f, capture_dirs, str(exc)) if f.kind is FileKind.CAPTURE else None
            if retry is not None:  # its intact records, cut free of a damaged tail, go up now
                return retry
            counts["failed"] += 1
            await self._reject(entry, f, capture_dirs, str(exc))
        except CaptureFormatError as exc:  # not a capture file at all: the cloud would refuse it too
            counts["failed"] += 1
            await self._reject(entry, f, capture_dirs, str(exc))
        except (OSError, ValueError) as exc:  # local trouble with this file: retry it later
            counts["failed"] += 1
            self._note_failure(f, f"{type(exc).__name__}: {exc}")
            log.warning("could not upload file; will retry", extra={"path": str(f.path), "error": str(exc)})
        else:
            counts["uploaded"] += 1
            counts["bytes"] += result.bytes_sent
            self._synced += 1
            self._bytes += result.bytes_sent
            self._index.discard(entry)
            self._retries.pop(str(f.path), None)
            self._commit_log.ok("commit", "the cloud's commit answers match the local files again")
            if self._cloud_error is not None:  # the cloud is back: files that waited for it are due now
                for r in self._retries.values():
                    if r.cloud_down:
                        r.not_before = 0.0
            self._cloud_error = None
            self._credentials_refused = False
            self._last_upload_ns = int(self._wall_time() * 1e9)
            self._cloud_log.ok("cloud", "cloud reachable again", cloud=self._client.base_url)
        return None

    async def _selective_skip(self) -> str | None:
        """Why the selective syncer says not to sync now, or None to go ahead."""
        if self.should_sync is None:
            return None
        try:
            go = await self.should_sync()
        except Exception as exc:  # unsure whether syncing is allowed now: do not sync
            reason = f"selective syncer failed: {type(exc).__name__}: {exc}"
            self._selective_log.fail("selective", "cannot read the selective syncer; not syncing", error=reason)
            return reason
        self._selective_log.ok("selective", "selective syncer readable again")
        return None if go else PAUSED

    def _note_failure(self, f: SyncFile, error: str, *, cloud_down: bool = False) -> None:
        r = self._retries.setdefault(str(f.path), _Retry())
        r.cloud_down = cloud_down
        delay = FILE_BACKOFF.delay(r.attempts)
        r.attempts += 1
        r.not_before = trio.current_time() + delay
        r.errors = (r.errors + [error])[-3:]

    async def _salvage(self, f: SyncFile, capture_dirs: list[Path], error: str) -> SyncFile | None:
        """For a capture file the cloud refused: cut it back to its intact records and keep its
        damaged tail in failed/ with a report (runtime/salvage.py); the file to upload instead, or
        None when there is nothing to salvage (it is then set aside whole)."""
        home = f.root if f.root in capture_dirs else None
        if home is None:
            return None
        try:
            done = await run_blocking(salvage_damaged_tail, f.path, home / FAILED_DIR, f.name)
        except OSError as exc:
            log.warning("could not salvage a damaged capture file", extra={"path": str(f.path), "error": str(exc)})
            return None
        if done is None:
            return None
        self._salvaged += 1
        log.error("capture file damaged after it was finished: its intact records sync, the damaged tail is set "
                  "aside", extra={"path": str(f.path), "offset": done.offset, "reason": done.reason,
                                  "intact_records": done.intact_records, "tail": str(done.tail),
                                  "report": str(done.report), "cloud_said": error})
        st = await run_blocking(os.stat, f.path)
        return dataclasses.replace(f, size=st.st_size, mtime_ns=st.st_mtime_ns)

    async def _reject(self, entry: Entry, f: SyncFile, capture_dirs: list[Path], error: str) -> None:
        home = f.root if f.root in capture_dirs else (capture_dirs[0] if capture_dirs else None)
        if home is None:
            self._note_failure(f, error)
            return
        dest = await run_blocking(set_aside, f, home, error)
        self._index.discard(entry)
        self._set_aside += 1
        self._retries.pop(str(f.path), None)
        log.error("cloud refused file for good; moved aside", extra={"path": str(f.path), "moved_to": str(dest),
                                                                     "error": error})


def interval_from_minutes(minutes: float) -> float:
    """Seconds between passes for a `sync_interval_mins` value."""
    return minutes * 60.0 if minutes > 0 and math.isfinite(minutes) else 6.0
