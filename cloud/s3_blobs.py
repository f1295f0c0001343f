"""The cloud's file bytes on an S3-API object store, shared by every `capsync cloud serve` process.

Keys under the bucket and prefix (docs/cloud.md, "Object store"):

    <prefix>uploads/<part>/<file_id>/<offset:020d>   one object per acknowledged chunk
    <prefix>files/<part>/<file_id>                   the committed file

A chunk is acknowledged only after S3 accepted its PUT (durable), and is written with
`If-None-Match: *`, so a retried or concurrent chunk at an offset already held is refused
(OffsetMismatch), never stored twice. The bytes held are the end of the chunks that follow each
other from offset 0, so any process can resume any upload. `publish` composes the chunks into the
committed object, which appears whole or not at all (a copy, a put, or a multipart upload), and
leaves the chunks until `discard`. An upload's checksum, verified at commit, covers every byte,
whichever processes received them.

To keep the hot path at one PUT per chunk, each process remembers what it knows of the uploads it
serves (the chunks, a running SHA-256 of the chunks it received itself in order) and checks that
memory against a listing, never trusts it alone. A commit that must read the chunks (a capture file
to parse, an upload received by another process) downloads them once into a scratch file.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capsync.cloud.blobs import READ_CHUNK, BlobsUnavailable, CommittedBlob, OffsetMismatch
from capsync.cloud.s3_client import Conflict, S3Settings, call
from capsync.cloud.s3_uri import parse_uri
from capsync.cloud.s3_compose import compose
from capsync.cloud.s3_scratch import ScratchCopies

log = logging.getLogger("capsync.cloud.s3")

#: Uploads whose state a process remembers at most (the oldest is forgotten first).
MAX_REMEMBERED = 4096


@dataclass(frozen=True)
class Chunk:
    """One chunk object: where it starts, its size, its ETag (what tells two writes apart)."""

    offset: int
    size: int
    etag: str
    modified_ns: int = field(default=0, compare=False)

    @property
    def end(self) -> int:
        """The offset just past this chunk."""
        return self.offset + self.size


def contiguous(chunks: list[Chunk], start: int = 0) -> list[Chunk]:
    """The chunks (sorted by offset) that follow each other from `start`, up to the first gap."""
    out, pos = [], start
    for c in chunks:
        if c.offset != pos:
            break
        out.append(c)
        pos = c.end
    return out


@dataclass
class _Progress:
    """What this process knows of one upload: its chunks from 0, and their SHA-256 if it saw them all."""

    chunks: list[Chunk]
    hasher: Any = None

    @property
    def end(self) -> int:
        return self.chunks[-1].end if self.chunks else 0


class S3Blobs:
    """Partial and committed file bytes in `bucket` under `prefix` (see the module doc).

    `settings` are the client's (None fields come from the standard AWS environment); `scratch_dir`
    holds local copies for parsing (cloud/s3_scratch.py; default: the system's temp dir), at most
    `scratch_bytes` of them idle.
    """

    def __init__(self, bucket: str, prefix: str = "", settings: S3Settings | None = None, *,
                 scratch_dir: Path | None = None, scratch_bytes: int = 1024**3, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.settings = settings or S3Settings()
        self.s3 = client if client is not None else self.settings.client()
        self.where = f"s3://{bucket}/{self.prefix}"
        self.copies = ScratchCopies(Path(scratch_dir) if scratch_dir is not None else Path(tempfile.gettempdir()),
                                    max_bytes=scratch_bytes)
        self._lock = threading.Lock()
        self._progress: OrderedDict[tuple[str, str], _Progress] = OrderedDict()
        self._verified: dict[tuple[str, str], tuple[Chunk, ...]] = {}
        self._conditional = True

    @classmethod
    def from_uri(cls, uri: str, settings: S3Settings | None = None, *, scratch_dir: Path | None = None) -> S3Blobs:
        """S3Blobs for `s3://bucket/prefix`; ValueError for a malformed address."""
        bucket, prefix = parse_uri(uri)
        return cls(bucket, prefix, settings, scratch_dir=scratch_dir)

    # -- keys and requests ------------------------------------------------------------------------

    def _chunk_prefix(self, part_id: str, file_id: str) -> str:
        return f"{self.prefix}uploads/{part_id}/{file_id}/"

    def chunk_key(self, part_id: str, file_id: str, offset: int) -> str:
        """The key of the chunk object at `offset` of an upload."""
        return f"{self._chunk_prefix(part_id, file_id)}{offset:020d}"

    def final_key(self, part_id: str, file_id: str) -> str:
        """The key of a committed file's object."""
        return f"{self.prefix}files/{part_id}/{file_id}"

    def request(self, what: str, fn: Any, **kwargs: Any) -> Any:
        """`fn(Bucket=..., **kwargs)`, a client method, with errors as s3_client.call makes them."""
        return call(self.where, what, fn, Bucket=self.bucket, **kwargs)

    def _list(self, prefix: str, start_after: str | None = None) -> Iterator[dict]:
        kwargs: dict[str, Any] = {"Prefix": prefix}
        if start_after is not None:
            kwargs["StartAfter"] = start_after
        while True:
            page = self.request("list objects", self.s3.list_objects_v2, **kwargs)
            yield from page.get("Contents", [])
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def _chunks(self, part_id: str, file_id: str, start_after: int | None = None) -> list[Chunk]:
        """Every chunk object of the upload (after the chunk at offset `start_after`), in offset order."""
        prefix = self._chunk_prefix(part_id, file_id)
        after = None if start_after is None else self.chunk_key(part_id, file_id, start_after)
        out = []
        for o in self._list(prefix, after):
            name = o["Key"][len(prefix):]
            if len(name) == 20 and name.isdigit():
                out.append(Chunk(int(name), int(o["Size"]), o["ETag"], _ns(o["LastModified"])))
        return out

    def _delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):  # S3's limit per DeleteObjects
            batch = [{"Key": k} for k in keys[i:i + 1000]]
            r = self.request("delete objects", self.s3.delete_objects, Delete={"Objects": batch, "Quiet": True})
            if r.get("Errors"):
                e = r["Errors"][0]
                raise BlobsUnavailable(f"{self.where}: could not delete {e.get('Key')}: {e.get('Code')} "
                                       f"{e.get('Message', '')}", "access denied" if e.get("Code") == "AccessDenied"
                                       else "object store error")

    # -- what this process remembers --------------------------------------------------------------

    def _state(self, key: tuple[str, str]) -> _Progress | None:
        with self._lock:
            return self._progress.get(key)

    def _remember(self, key: tuple[str, str], state: _Progress) -> None:
        with self._lock:
            self._progress[key] = state
            self._progress.move_to_end(key)
            while len(self._progress) > MAX_REMEMBERED:
                self._progress.popitem(last=False)

    def _forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._progress.pop(key, None)
            self._verified.pop(key, None)
        self.copies.drop(("upload", *key))

    # -- the Blobs interface ------------------------------------------------------------------------

    def describe(self) -> str:
        """`s3://bucket/prefix/` and the endpoint."""
        return f"{self.where} at {self.s3.meta.endpoint_url}"

    def check(self) -> None:
        """HEAD the bucket: BlobsUnavailable saying why when the cloud cannot use it."""
        try:
            self.request("reach the bucket", self.s3.head_bucket)
        except FileNotFoundError:
            raise BlobsUnavailable(f"{self.where}: the bucket does not exist at {self.s3.meta.endpoint_url}; "
                                   "create it or fix --blobs", "no such bucket") from None

    def held(self, part_id: str, file_id: str) -> int:
        """The end of the chunks from offset 0: one listing, after the last chunk this process knows."""
        key = (part_id, file_id)
        st = self._state(key)
        if st is not None and st.chunks:
            last = st.chunks[-1]
            found = self._chunks(part_id, file_id, last.offset - 1) if last.offset else self._chunks(part_id, file_id)
            if found and found[0] == last:
                more = contiguous(found[1:], last.end)
                if more:  # received by another process: this one's running checksum no longer covers all
                    st.chunks.extend(more)
                    st.hasher = None
                return st.end
        chunks = contiguous(self._chunks(part_id, file_id))
        if st is None or st.chunks or chunks:
            self._remember(key, _Progress(chunks, None if chunks else hashlib.sha256()))
        return chunks[-1].end if chunks else 0

    def reset(self, part_id: str, file_id: str) -> None:
        """Delete the upload's chunks; it holds 0 bytes."""
        self.discard(part_id, file_id)
        self._remember((part_id, file_id), _Progress([], hashlib.sha256()))

    def append(self, part_id: str, file_id: str, offset: int, data: bytes) -> int:
        """PUT `data` as the chunk at `offset` (if no chunk is there yet); return the new size.

        OffsetMismatch when `offset` is not the bytes held, or another request stored that chunk first.
        """
        key = (part_id, file_id)
        st = self._state(key)
        held = st.end if st is not None and st.end == offset else self.held(part_id, file_id)
        if held != offset:
            raise OffsetMismatch(held)
        if not data:
            return offset
        r = self._put_chunk(part_id, file_id, offset, data)
        st = self._state(key)
        if st is not None and st.end == offset:
            st.chunks.append(Chunk(offset, len(data), r["ETag"], time.time_ns()))
            if st.hasher is not None:
                st.hasher.update(data)
        else:
            self._forget(key)
        return offset + len(data)

    def _put_chunk(self, part_id: str, file_id: str, offset: int, data: bytes) -> dict:
        key = self.chunk_key(part_id, file_id, offset)
        if self._conditional:
            try:
                return self.request("store a chunk", self.s3.put_object, Key=key, Body=data, IfNoneMatch="*")
            except Conflict:
                self._forget((part_id, file_id))
                raise OffsetMismatch(self.held(part_id, file_id)) from None
            except BlobsUnavailable as exc:
                if exc.reason != "not supported":
                    raise
                log.warning("the object store ignores If-None-Match; a chunk sent twice at once to two cloud "
                            "processes is caught only by the commit's checksum", extra={"blobs": self.where})
                self._conditional = False
        return self.request("store a chunk", self.s3.put_object, Key=key, Body=data)

    def sha256(self, part_id: str, file_id: str) -> str:
        """The running checksum when this process received every chunk listed, else one download."""
        key = (part_id, file_id)
        chunks = tuple(contiguous(self._chunks(part_id, file_id)))
        st = self._state(key)
        if st is not None and st.hasher is not None and tuple(st.chunks) == chunks:
            digest = st.hasher.copy().hexdigest()
        else:
            with self.copies.use(("upload", *key), chunks, self._download(key, chunks)) as copy:
                digest = copy.digest
        with self._lock:
            self._verified[key] = chunks
        return digest

    @contextmanager
    def open_partial(self, part_id: str, file_id: str) -> Iterator[Path]:
        """A scratch file with the upload's chunks (downloaded at most once per commit)."""
        key = (part_id, file_id)
        chunks = tuple(contiguous(self._chunks(part_id, file_id)))
        with self.copies.use(("upload", *key), chunks, self._download(key, chunks)) as copy:
            yield copy.path

    def _download(self, key: tuple[str, str], chunks: tuple[Chunk, ...]) -> Any:
        """A filler for ScratchCopies: write the chunks to the file, return their SHA-256."""
        def fill(f: Any) -> str:
            h = hashlib.sha256()
            for c in chunks:
                for piece in self.chunk_bytes(key, c):
                    h.update(piece)
                    f.write(piece)
            return h.hexdigest()

        return fill

    def chunk_bytes(self, key: tuple[str, str], c: Chunk) -> Iterator[bytes]:
        """The bytes of chunk `c` of upload `key`, streamed; BlobsUnavailable if it is no longer that chunk."""
        try:
            r = self.request("read a chunk", self.s3.get_object, Key=self.chunk_key(*key, c.offset), IfMatch=c.etag)
        except (FileNotFoundError, Conflict):
            raise BlobsUnavailable(f"{self.where}: upload {key[0]}/{key[1]} changed while being read (another "
                                   "cloud process reset it); retry", "upload changed") from None
        body = r["Body"]
        try:
            yield from _body_chunks(self.where, body)
        finally:
            body.close()

    def publish(self, part_id: str, file_id: str) -> None:
        """Compose the chunks into the committed object (cloud/s3_compose.py); the chunks stay."""
        key = (part_id, file_id)
        chunks = tuple(contiguous(self._chunks(part_id, file_id)))
        with self._lock:
            verified = self._verified.pop(key, None)
        if verified is not None and verified != chunks:
            raise BlobsUnavailable(f"{self.where}: upload {part_id}/{file_id} changed between its checksum and "
                                   "its publication (another cloud process reset it); retry", "upload changed")
        try:
            with self.copies.use(("upload", *key), chunks) as kept:
                compose(self, key, chunks, kept.path if kept is not None else None)
        except (Conflict, FileNotFoundError):  # a chunk was replaced or removed under the copy
            raise BlobsUnavailable(f"{self.where}: upload {part_id}/{file_id} changed while being published "
                                   "(another cloud process reset it); retry", "upload changed") from None
        self.copies.drop(("upload", *key))

    def put_committed(self, part_id: str, file_id: str, data: bytes) -> None:
        """One PUT of the committed object."""
        self.request("store a committed file", self.s3.put_object, Key=self.final_key(part_id, file_id), Body=data)

    def discard(self, part_id: str, file_id: str) -> None:
        """Delete the upload's chunk objects (one listing, one delete)."""
        self._forget((part_id, file_id))
        self._delete([o["Key"] for o in self._list(self._chunk_prefix(part_id, file_id))])

    def partial_files(self) -> list[tuple[str, str, int]]:
        """Every upload with chunks, and its newest chunk's LastModified (one listing of uploads/)."""
        base = f"{self.prefix}uploads/"
        newest: dict[tuple[str, str], int] = {}
        for o in self._list(base):
            path = o["Key"][len(base):].split("/")
            if len(path) == 3:
                k = (path[0], path[1])
                newest[k] = max(newest.get(k, 0), _ns(o["LastModified"]))
        return [(p, f, ns) for (p, f), ns in newest.items()]

    def last_write_ns(self, part_id: str, file_id: str) -> int | None:
        """The newest chunk's LastModified, or None when it has none."""
        chunks = self._chunks(part_id, file_id)
        return max(c.modified_ns for c in chunks) if chunks else None

    def committed_size(self, part_id: str, file_id: str) -> int | None:
        """HEAD the committed object: its size, or None when it is not stored."""
        try:
            return int(self.request("read a committed file", self.s3.head_object,
                                  Key=self.final_key(part_id, file_id))["ContentLength"])
        except FileNotFoundError:
            return None

    def read_committed(self, part_id: str, file_id: str) -> CommittedBlob:
        """GET the committed object, streamed READ_CHUNK bytes at a time."""
        r = self.request("read a committed file", self.s3.get_object, Key=self.final_key(part_id, file_id))
        body = r["Body"]
        return CommittedBlob(int(r["ContentLength"]), _body_chunks(self.where, body), _close=body.close)

    @contextmanager
    def open_committed(self, part_id: str, file_id: str) -> Iterator[Path]:
        """A scratch copy of the committed object: one HEAD, and a download unless the copy kept
        from an earlier request still has the object's ETag."""
        dst = self.final_key(part_id, file_id)
        etag = self.request("read a committed file", self.s3.head_object, Key=dst)["ETag"]

        def fill(f: Any) -> None:
            try:
                body = self.request("read a committed file", self.s3.get_object, Key=dst, IfMatch=etag)["Body"]
            except Conflict:  # published again since the HEAD: same bytes, or removed
                raise FileNotFoundError(dst) from None
            try:
                for piece in _body_chunks(self.where, body):
                    f.write(piece)
            finally:
                body.close()

        with self.copies.use(("file", part_id, file_id), etag, fill) as copy:
            yield copy.path

    def drop_committed(self, part_id: str, file_id: str) -> None:
        """Delete the committed object (S3 answers a missing one as deleted)."""
        self.copies.drop(("file", part_id, file_id))
        self.request("delete a committed file", self.s3.delete_object, Key=self.final_key(part_id, file_id))

    def drop_part(self, part_id: str) -> None:
        """Delete every object under the part's uploads/ and files/ prefixes."""
        with self._lock:
            for key in [k for k in self._progress if k[0] == part_id]:
                del self._progress[key]
        self.copies.drop_where(lambda k: k[1] == part_id)
        keys = [o["Key"] for sub in ("uploads", "files") for o in self._list(f"{self.prefix}{sub}/{part_id}/")]
        self._delete(keys)

    def free_bytes(self) -> int | None:
        """None: an object store has no free space to check (its quotas are the operator's)."""
        return None


def _ns(when: Any) -> int:
    """A LastModified datetime as ns since the epoch."""
    return int(when.timestamp() * 1_000_000) * 1000


def _body_chunks(where: str, body: Any) -> Iterator[bytes]:
    """A response body's bytes, READ_CHUNK at a time, with a broken stream as BlobsUnavailable."""
    while True:
        try:
            piece = call(where, "read an object", body.read, amt=READ_CHUNK)
        except OSError as exc:
            raise BlobsUnavailable(f"{where}: the object store stopped sending: {exc}", "unreachable") from None
        if not piece:
            return
        yield piece
