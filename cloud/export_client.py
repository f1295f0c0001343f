"""`capsync cloud export`: every reading and file of a part matching the filters, from a running cloud
into a folder, resumable (docs/cloud.md, "Export").

The folder holds:

    export.json                 what is exported (filters, data, format); a rerun must match it
    readings.jsonl | .csv       the tabular rows, one per line, oldest first
    binary.jsonl | .csv         one line per binary item, written after its bytes are saved
    files/<type>/<name>/<method>/<YYYY-MM-DD>/<HHMMSS.nnnnnnnnn>Z_<item id><ext>   the bytes

Resuming: a line is complete once it ends with a newline; a rerun (or the automatic retry after a
dropped connection) cuts a torn last line, reads the key (requested_ns, file_id, record_index) of
the last complete one and asks the cloud for the rows after it, so no row is written twice or
skipped. A binary item's bytes are written to a temporary name and renamed before its line, so a
line always names a whole file. A rerun of a finished export adds only rows newer than its last.
Progress goes to stderr: a tqdm bar (rate, ETA) on a terminal, a plain line every few seconds
otherwise. Exit codes: 0 done, 1 the cloud failed or could not be reached, 2 bad input.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import httpx

from capsync.runtime.sync_protocol import API_PREFIX

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
#: A dropped connection or a 5xx is retried this many times (after 1, 2, 4, ... s), resuming each time.
RETRIES = 5
PLAIN_PROGRESS_EVERY_S = 5.0
_EXT = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp", "image/bmp": ".bmp",
        "pointcloud/pcd": ".pcd", "application/json": ".json", "text/plain": ".txt", "text/csv": ".csv"}
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class ExportError(Exception):
    """The export cannot go on; `code` is the exit code, the message says why and what to do."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Target:
    """Where to export from: the cloud's URL and the part's credentials."""

    url: str
    part_id: str
    secret: str


def target_of(args: argparse.Namespace) -> Target:
    """The cloud and credentials from `--config` (a robot config's cloud section), --url, --part and
    the secret from --secret-file or $CAPSYNC_SECRET; ExportError (exit 2) when one is missing."""
    url, part, secret = args.url, args.part, None
    if args.config is not None:
        from capsync.runtime.config import ConfigError, load_config

        try:
            cloud = load_config(args.config).cloud
        except ConfigError as exc:
            raise ExportError(f"{args.config}: {exc}", EXIT_BAD_INPUT) from None
        url, part, secret = url or cloud.app_address, part or cloud.id, cloud.secret or None
    if args.secret_file is not None:
        try:
            secret = args.secret_file.read_text().strip()
        except OSError as exc:
            raise ExportError(f"--secret-file {args.secret_file}: {exc.strerror}", EXIT_BAD_INPUT) from None
    secret = secret or os.environ.get("CAPSYNC_SECRET")
    for value, fix in ((url, "--url or a --config with cloud.app_address"), (part, "--part or a --config with cloud.id"),
                       (secret, "--secret-file, $CAPSYNC_SECRET or a --config with cloud.secret")):
        if not value:
            raise ExportError(f"say which cloud and part to export from: give {fix}", EXIT_BAD_INPUT)
    return Target(url.rstrip("/"), part, secret)


def filters_of(args: argparse.Namespace) -> dict[str, Any]:
    """The query filters of the command line, as the cloud's query string takes them."""
    out: dict[str, Any] = {}
    for name in ("resource_type", "resource_name", "method", "start", "end"):
        if getattr(args, name) is not None:
            out[name] = getattr(args, name)
    if args.tag:
        out["tag"] = list(args.tag)
    return out


# -- resuming: the last complete line of a file ----------------------------------------------------

def last_line(path: Path) -> bytes | None:
    """Cut a torn last line off `path` (no newline: the write was interrupted); its last complete line, or None."""
    if not path.exists():
        return None
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        block, tail = 1 << 16, b""
        pos = size
        while pos > 0:  # read backwards until the text holds the two newlines around the last line
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            tail = f.read(step) + tail
            if tail.count(b"\n") >= 2 or (pos == 0 and b"\n" in tail):
                break
        end = tail.rfind(b"\n")
        if end < 0:  # not one complete line
            f.truncate(0)
            return None
        f.truncate(pos + end + 1)
        start = tail.rfind(b"\n", 0, end) + 1
        return tail[start:end]


def count_lines(path: Path) -> int:
    """Complete lines of `path` (0 when missing)."""
    if not path.exists():
        return 0
    n = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


def key_of(line: bytes, fmt: str, kind: str) -> list[Any] | None:
    """The sort key [requested_ns, file_id, record_index] of an exported line (None for a CSV header)."""
    if fmt == "jsonl":
        row = json.loads(line)
    else:
        from capsync.cloud.export import CSV_COLUMNS

        cells = next(csv.reader([line.decode()]))
        if cells == CSV_COLUMNS[kind]:
            return None
        row = dict(zip(CSV_COLUMNS[kind], cells))
    return [int(row["requested_ns"]), str(row["file_id"]), int(row["record_index"])]


def cursor_of(key: list[Any] | None) -> str | None:
    """The query API's cursor of a key (as capsync.cloud.query.encode_cursor makes it)."""
    if key is None:
        return None
    from capsync.cloud.query import encode_cursor

    return encode_cursor(key)


# -- progress ------------------------------------------------------------------------------------

class Progress:
    """A tqdm bar on a terminal; otherwise a plain line to `stream` every PLAIN_PROGRESS_EVERY_S and at the end."""

    def __init__(self, what: str, done: int, total: int | None, stream: Any = None) -> None:
        self.what, self.done, self.total = what, done, total
        self.stream = stream or sys.stderr
        self.started, self.start_done = time.monotonic(), done
        self.last_print = self.started
        self.bar = None
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit=" rows" if what == "readings" else " files",
                            unit_scale=True, desc=what, file=self.stream, dynamic_ncols=True)

    def add(self, n: int) -> None:
        """`n` more rows or files done."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.monotonic() - self.last_print >= PLAIN_PROGRESS_EVERY_S:
            self._line()

    def _line(self, final: bool = False) -> None:
        self.last_print = now = time.monotonic()
        rate = (self.done - self.start_done) / max(now - self.started, 1e-9)
        text = f"export {self.what}: {self.done}"
        if self.total:
            text += f"/{self.total} ({100 * self.done / self.total:.1f}%)"
        text += f", {rate:,.0f}/s"
        if self.total and not final and rate > 0:
            text += f", ETA {max(0, self.total - self.done) / rate:,.0f} s"
        print(text + (" - done" if final else ""), file=self.stream, flush=True)

    def close(self) -> None:
        """End the bar, or print the last plain line."""
        if self.bar is not None:
            self.bar.close()
        else:
            self._line(final=True)


# -- the export ------------------------------------------------------------------------------------

def _check(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    resp.read()
    try:
        body = resp.json()
        reason = f"{body.get('error')}: {body.get('detail')}"
    except ValueError:
        reason = resp.text[:200]
    if resp.status_code in (401, 403):
        raise ExportError(f"the cloud refused the part ({resp.status_code} {reason}); check the part id and secret",
                          EXIT_BAD_INPUT)
    if resp.status_code == 400:
        raise ExportError(f"the cloud refused the export ({reason})", EXIT_BAD_INPUT)
    raise _Retry(f"{resp.status_code} {reason}")


class _Retry(Exception):
    """A failure worth retrying (dropped connection, 5xx, 429)."""


def _retrying(what: str, attempt: Any) -> Any:
    delay = 1.0
    for n in range(RETRIES + 1):
        try:
            return attempt()
        except (httpx.TransportError, _Retry) as exc:
            if n == RETRIES:
                raise ExportError(f"export {what}: the cloud failed {RETRIES + 1} times ({exc}); "
                                  "run the same command again to resume") from None
            print(f"export {what}: {type(exc).__name__}: {str(exc)[:200]}; resuming in {delay:g} s", file=sys.stderr,
                  flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")


def data_lines(path: Path, fmt: str) -> int:
    """Rows in an exported file: its complete lines, less the CSV header."""
    n = count_lines(path)
    return max(0, n - 1) if fmt == "csv" else n


def export_tabular(client: httpx.Client, out: Path, fmt: str, filters: dict[str, Any], stream: Any = None) -> int:
    """Append every reading after the last one in `out/readings.<fmt>`; returns how many the file holds."""
    path = out / f"readings.{fmt}"
    progress: Progress | None = None

    def attempt() -> None:
        nonlocal progress
        line = last_line(path)
        key = key_of(line, fmt, "tabular") if line else None
        if key is None and path.exists():
            path.write_bytes(b"")  # at most a CSV header: the cloud sends it again
        params = {**filters, "format": fmt, **({"cursor": cursor_of(key)} if key else {})}
        with client.stream("GET", f"{API_PREFIX}/export/tabular", params=params) as resp:
            _check(resp)
            done = data_lines(path, fmt)
            total = done + int(resp.headers.get("x-capsync-total", "0"))
            if progress is None:
                progress = Progress("readings", done, total, stream)
            progress.total = total
            header = fmt == "csv" and key is None  # the first line to come is the header, not a row
            with path.open("ab") as f:
                for chunk in resp.iter_raw():
                    f.write(chunk)
                    n = chunk.count(b"\n")
                    if header and n:
                        n, header = n - 1, False
                    progress.add(n)
                f.flush()
                os.fsync(f.fileno())

    try:
        _retrying("readings", attempt)
    finally:
        if progress is not None:
            progress.close()
    return data_lines(path, fmt)


def item_path(item: dict[str, Any]) -> Path:
    """The item's place under files/: named by resource and time, every part made safe as a file name."""
    def safe(text: str) -> str:
        name = _SAFE.sub("_", text)[:100]
        return "_" if name in ("", ".", "..") else name

    iso = str(item["requested"])  # 2026-01-02T03:04:05.123456789Z
    day, _, clock = iso.partition("T")
    resource = [safe(item["resource_type"]), safe(item["resource_name"]), safe(item["method"])] \
        if item["resource_type"] else ["_files"]
    ext = _EXT.get(item.get("mime_type") or "") or (Path(item.get("name") or "").suffix[:10] or ".bin")
    return Path("files", *resource, safe(day), f"{safe(clock.replace(':', ''))}_{safe(item['id'])}{safe(ext)}")


def _lines(resp: httpx.Response) -> Iterator[bytes]:
    rest = b""
    for chunk in resp.iter_raw():
        rest += chunk
        *whole, rest = rest.split(b"\n")
        yield from whole


def _save(client: httpx.Client, item: dict[str, Any], dest: Path) -> bool:
    """Save the item's bytes at `dest` (a temporary name, then renamed); False when the cloud no longer has them."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    with client.stream("GET", item["url"]) as resp:
        if resp.status_code == 404:
            return False
        _check(resp)
        with tmp.open("wb") as f:
            for chunk in resp.iter_raw():
                f.write(chunk)
    os.replace(tmp, dest)
    return True


def export_binary(client: httpx.Client, out: Path, fmt: str, filters: dict[str, Any], stream: Any = None) -> tuple[int, int]:
    """Save every binary item after the last one in `out/binary.<fmt>`; (items the index holds, bytes missing)."""
    from capsync.cloud.export import CSV_COLUMNS, csv_line

    index = out / f"binary.{fmt}"
    progress: Progress | None = None
    missing = 0

    def attempt() -> None:
        nonlocal progress, missing
        line = last_line(index)
        cursor = cursor_of(key_of(line, fmt, "binary") if line else None)
        params = {**filters, "format": "jsonl", **({"cursor": cursor} if cursor else {})}
        with client.stream("GET", f"{API_PREFIX}/export/binary", params=params) as resp:
            _check(resp)
            done = data_lines(index, fmt)
            total = done + int(resp.headers.get("x-capsync-total", "0"))
            if progress is None:
                progress = Progress("files", done, total, stream)
            progress.total = total
            with index.open("ab") as f:
                if fmt == "csv" and f.tell() == 0:
                    f.write(csv_line(CSV_COLUMNS["binary"]).encode())
                for raw in _lines(resp):
                    item = json.loads(raw)
                    if not _save(client, item, out / item_path(item)):
                        missing += 1
                        print(f"export files: {item['id']}: the cloud no longer holds its bytes (retention?)",
                              file=sys.stderr, flush=True)
                    f.write((raw + b"\n") if fmt == "jsonl" else csv_line([item[c] for c in CSV_COLUMNS["binary"]]).encode())
                    f.flush()  # the line is written only once the file is whole
                    progress.add(1)
                os.fsync(f.fileno())

    try:
        _retrying("files", attempt)
    finally:
        if progress is not None:
            progress.close()
    return data_lines(index, fmt), missing


def _manifest(out: Path, wanted: dict[str, Any]) -> None:
    path = out / "export.json"
    if path.exists():
        try:
            have = json.loads(path.read_text())
        except ValueError:
            have = None
        if have != wanted:
            raise ExportError(f"{out} holds an export of other filters or format ({path}); "
                              "give another --out, or the same options to resume it", EXIT_BAD_INPUT)
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("export.json.tmp")
    tmp.write_text(json.dumps(wanted, indent=2) + "\n")
    os.replace(tmp, path)


def cmd_export(args: argparse.Namespace, stream: Any = None) -> int:
    """`capsync cloud export`: the part's readings and/or files matching the filters into `--out`."""
    try:
        target = target_of(args)
        filters = filters_of(args)
        try:
            _manifest(args.out, {"cloud": target.url, "part_id": target.part_id, "data": args.data,
                                 "format": args.format, "filters": filters})
        except OSError as exc:
            raise ExportError(f"--out {args.out}: {exc.strerror}", EXIT_BAD_INPUT) from None
        with httpx.Client(base_url=target.url, auth=(target.part_id, target.secret),
                          timeout=httpx.Timeout(60.0, connect=10.0)) as client:
            summary: dict[str, Any] = {"out": str(args.out)}
            if args.data in ("all", "tabular"):
                summary["readings"] = export_tabular(client, args.out, args.format, filters, stream)
            if args.data in ("all", "binary"):
                summary["files"], summary["files_missing"] = export_binary(client, args.out, args.format, filters, stream)
    except ExportError as exc:
        print(f"capsync cloud export: {exc}", file=sys.stderr)
        return exc.code
    print(json.dumps(summary), flush=True)
    return EXIT_OK
