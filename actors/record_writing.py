"""The writing half of a collector: its readings into capture files, and what a refusing disk means.

A `RecordWriting` appends each record to the collector's open file (actors/capture_files.py opens,
fsyncs and finishes the files in the background), retires the file once it is full, and asks for
a spare to be opened ahead before then. A write that the disk refuses (ENOSPC, EIO, ...) drops
that reading: it is counted as dropped, the error is logged once per change of state, the file
stays readable, and writing resumes when the disk takes writes again.
"""

from __future__ import annotations

import errno
import logging
import zlib
from collections import Counter
from pathlib import Path
from typing import Callable

from capsync.actors.capture_files import CaptureFiles
from capsync.runtime.capture_file import MAX_RECORDS_PER_FILE, CaptureHeader, CaptureWriter
from capsync.runtime.capture_writer import RecordRefused
from capsync.runtime.faults import FaultPlan
from capsync.runtime.logs import StateChangeLog

log = logging.getLogger("capsync.collector")

#: A collector's first file is cut at this share of the size limit or more (see RecordWriting).
FIRST_FILE_MIN_SHARE = 0.5


class RecordWriting:
    """Appends one collector's records to its capture files (see the module docstring).

    `header(mime_type)` makes the header of each new file; `on_refused(reason)` is told of a record
    that no reader would accept (a failed capture, not a disk problem); `on_error(text)` of each
    disk error, for the collector's `last_error`.
    """

    def __init__(self, name: str, capture_dir: Path, header: Callable[[str], CaptureHeader], *,
                 fsync_interval_s: float, max_file_age_s: float, max_file_bytes: int,
                 on_refused: Callable[[str], None], on_error: Callable[[str], None]) -> None:
        self.name = name
        self.files = CaptureFiles(capture_dir, name, header, fsync_interval_s=fsync_interval_s,
                                  max_file_age_s=max_file_age_s, max_file_bytes=max_file_bytes,
                                  on_disk_error=self.disk_failed)
        self._size_limit = max_file_bytes
        # The first file is cut at a share of the limit of its own (from the name, so runs repeat):
        # collectors that start together and tick together would otherwise fill and switch files
        # at the same instant, and 100 file switches at once hold up every collector's ticks.
        share = FIRST_FILE_MIN_SHARE + (1 - FIRST_FILE_MIN_SHARE) * (zlib.crc32(name.encode()) / 2**32)
        self._limit_now = int(max_file_bytes * share)
        if self._limit_now > 0:
            self.files.spare_at = self._limit_now // 2
        self._on_refused = on_refused
        self._on_error = on_error
        self._errors = StateChangeLog(log)  # once per change of state
        #: True from a refused write until the next one that works.
        self.disk_failing = False
        self.dropped = 0  # readings the disk refused
        self.bytes = 0  # bytes appended
        #: Fault injection (tests): points before_write and after_write.
        self.faults: FaultPlan | None = None
        #: When set (simulation), counts the records appended per file id.
        self.ledger: Counter[str] | None = None

    async def writer_for(self, mime_type: str) -> CaptureWriter | None:
        """The open file for a record of `mime_type` (taking the spare, or opening one, if needed);
        None when the disk refused (the reading is dropped and counted)."""
        files = self.files
        try:
            if self.faults is not None:
                self.faults.hit_sync(self.name, "before_write")
            w = files.writer
            if w is None or (mime_type and w.header.mime_type != mime_type):
                if w is not None:
                    files.retire()
                await files.wait_for_disk()
                w = files.take(mime_type) or await files.open(mime_type)
        except OSError as exc:  # ENOSPC, EIO, ...
            self.dropped += 1
            self.disk_failed(exc)
            return None
        return w

    def append(self, w: CaptureWriter, requested_ns: int, received_ns: int, payload: object,
               metadata: dict | None) -> bool:
        """Append the record to `w`; False when it was refused or the disk refused it. The file is
        retired once it is full."""
        try:
            self.bytes += w.append_values(requested_ns, received_ns, payload, metadata)
        except RecordRefused as exc:  # a reading no reader (the cloud included) would accept
            self._on_refused(str(exc))
            return False
        except OSError as exc:  # ENOSPC, EIO, ...: the writer cut any partial frame off again
            self.dropped += 1
            self.disk_failed(exc)
            return False
        if self.ledger is not None:
            self.ledger[w.header.file_id] += 1
        if self.faults is not None:  # a crash right after a record reached the file
            self.faults.hit_sync(self.name, "after_write")
        if self.disk_failing:
            self.disk_failing = False
            self._errors.ok("disk", "capture writes work again", actor=self.name, dropped_total=self.dropped)
        files = self.files
        size, limit = w.size_bytes, self._limit_now
        if (limit > 0 and size >= limit) or w.record_count >= MAX_RECORDS_PER_FILE:
            files.retire()
            if self._limit_now != self._size_limit:
                self._limit_now, files.spare_at = self._size_limit, self._size_limit // 2
        elif size >= files.spare_at:
            files.want_spare()
        return True

    def disk_failed(self, exc: OSError) -> None:
        """Log a refused write once per change of state, and retire the open file if it is unusable."""
        reason = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        self._on_error(f"write failed: {exc}")
        self.disk_failing = True
        self._errors.fail("disk", f"capture file write failed ({reason}); readings are dropped until "
                          "writes work again", actor=self.name, error=str(exc))
        w = self.files.writer
        if w is not None and (w.record_count == 0 or w.statistics().state != "open"):
            self.files.retire()
