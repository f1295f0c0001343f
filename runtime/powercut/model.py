"""What a disk is guaranteed to hold after power loss, tracked over a pass-through folder.

Every operation goes straight to the backing folder (the live state, what running programs see).
Alongside, the model keeps just enough to rebuild the *durable* state at any moment:

- per file: its size at its last fsync/fdatasync, and the old bytes of every durable byte
  overwritten (or cut off by a truncate) since then (an undo log; appends cost nothing), plus the
  unsynced writes in order (for a torn last write);
- per directory: its entries (name -> node) at its last fsync, next to its live entries.

A file unlinked (or replaced by a rename) while an unsynced directory still names it, or while it
is open, is moved aside into ``.powercut/orphans/`` rather than deleted, so its durable bytes stay
available. ``cut()`` rebuilds the backing folder as the durable tree: reachable from the root's
durable entries, each file cut back to its durable bytes, optionally keeping a random-length
prefix of its unsynced writes (a torn write). Everything already in the backing folder when the
model starts is durable. Only regular files and directories are modelled (no hard links,
symlinks or special files). No FUSE and no Trio here: the file system (fs.py) calls in, one
operation at a time.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field

#: Hidden folder at the top of the backing folder: orphans and the staging area of a cut.
STATE_DIR = b".powercut"


@dataclass(eq=False)
class Node:
    """A file or directory; `id` doubles as its FUSE inode number."""

    id: int
    is_dir: bool
    parent: Node | None = None  # live link (None: unlinked, or the root)
    name: bytes = b""
    entries: dict[bytes, Node] = field(default_factory=dict)  # dirs: live entries
    durable_entries: dict[bytes, Node] = field(default_factory=dict)  # dirs: entries at the last fsync
    durable_refs: int = 0  # how many durable entries name this node
    durable_size: int = 0  # files: size at the last fsync
    saved: list[tuple[int, int]] = field(default_factory=list)  # durable byte ranges whose old bytes are in undo
    undo: list[tuple[int, bytes]] = field(default_factory=list)
    writes: list[list[int]] = field(default_factory=list)  # unsynced writes [offset, length], in order
    truncated: bool = False  # a truncate since the last fsync (then no torn write for this file)
    orphan: bool = False  # lives in the orphans folder
    open_count: int = 0


@dataclass(frozen=True)
class TornWrite:
    """A file that kept `kept` of its `unsynced` unsynced bytes (in write order) through a cut."""

    path: str
    unsynced: int
    kept: int


@dataclass(frozen=True)
class CutReport:
    """What a power cut forgot: paths that reverted (appeared, vanished), files cut back, torn writes."""

    vanished: tuple[str, ...]  # live paths the durable state does not hold
    appeared: tuple[str, ...]  # paths the durable state holds that were gone from the live state
    files_cut_back: tuple[str, ...]  # files whose durable bytes differ from the live ones
    bytes_forgotten: int  # unsynced bytes of files that survive, not kept by a torn write
    torn: tuple[TornWrite, ...]

    def to_dict(self) -> dict:
        """As JSON-ready values."""
        return {"vanished": list(self.vanished), "appeared": list(self.appeared),
                "files_cut_back": list(self.files_cut_back), "bytes_forgotten": self.bytes_forgotten,
                "torn": [t.__dict__ for t in self.torn]}

    @classmethod
    def from_dict(cls, d: dict) -> CutReport:
        """The inverse of to_dict."""
        return cls(tuple(d["vanished"]), tuple(d["appeared"]), tuple(d["files_cut_back"]), d["bytes_forgotten"],
                   tuple(TornWrite(**t) for t in d["torn"]))


class DurableModel:
    """The live tree in `backing` (bytes path) and what of it is durable. See the module docstring."""

    def __init__(self, backing: bytes) -> None:
        self.backing = os.path.abspath(backing)
        self.state = os.path.join(self.backing, STATE_DIR)
        shutil.rmtree(self.state, ignore_errors=True)  # left by a file system process that was killed
        os.makedirs(os.path.join(self.state, b"orphans"))
        self._next_id = 2
        self.nodes: dict[int, Node] = {}
        self.root = self._add(Node(1, True))
        self._scan(self.root, self.backing)
        self.fsyncs = 0
        self.dir_fsyncs = 0

    # --- the tree -------------------------------------------------------------------------------

    def _add(self, node: Node) -> Node:
        self.nodes[node.id] = node
        return node

    def _new(self, parent: Node, name: bytes, is_dir: bool) -> Node:
        node = self._add(Node(self._next_id, is_dir, parent, name))
        self._next_id += 1
        parent.entries[name] = node
        return node

    def _scan(self, d: Node, path: bytes) -> None:
        with os.scandir(path) as it:
            for e in it:
                if d is self.root and e.name == STATE_DIR:
                    continue
                if e.is_dir(follow_symlinks=False):
                    child = self._new(d, e.name, True)
                    self._scan(child, e.path)
                elif e.is_file(follow_symlinks=False):
                    child = self._new(d, e.name, False)
                    child.durable_size = e.stat(follow_symlinks=False).st_size
                else:
                    continue
                d.durable_entries[e.name] = child
                child.durable_refs += 1

    def path(self, node: Node) -> bytes:
        """Where the node's bytes are now in the backing folder."""
        if node.orphan:
            return os.path.join(self.state, b"orphans", str(node.id).encode())
        parts = []
        n = node
        while n.parent is not None:
            parts.append(n.name)
            n = n.parent
        if n is not self.root:
            raise FileNotFoundError(2, "No such file or directory (removed)")
        return os.path.join(self.backing, *reversed(parts)) if parts else self.backing

    def child(self, parent: Node, name: bytes) -> Node:
        """The live entry `name` of directory `parent`; FileNotFoundError if none."""
        try:
            return parent.entries[name]
        except KeyError:
            raise FileNotFoundError(2, "No such file or directory", name) from None

    # --- namespace operations -------------------------------------------------------------------

    def create(self, parent: Node, name: bytes, mode: int, flags: int) -> tuple[Node, int]:
        """Create (or open, without O_EXCL) file `name`; returns the node and a read-write fd."""
        if name in parent.entries:
            if flags & os.O_EXCL:
                raise FileExistsError(17, "File exists", name)
            node = parent.entries[name]
            return node, self.open(node, flags)
        fd = os.open(os.path.join(self.path(parent), name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        node = self._new(parent, name, False)
        node.open_count += 1
        return node, fd

    def open(self, node: Node, flags: int) -> int:
        """A read-write fd of the file's backing bytes (O_TRUNC applied through the model)."""
        fd = os.open(self.path(node), os.O_RDWR | os.O_CLOEXEC)
        node.open_count += 1
        if flags & os.O_TRUNC:
            self.truncate(node, 0, fd)
        return fd

    def release(self, node: Node, fd: int) -> None:
        """The kernel closed its last reference to a handle of `node`."""
        os.close(fd)
        node.open_count -= 1
        self._collect(node)

    def mkdir(self, parent: Node, name: bytes, mode: int) -> Node:
        """mkdir; the new directory is empty in the durable state until its parent's fsync names it."""
        os.mkdir(os.path.join(self.path(parent), name), mode)
        return self._new(parent, name, True)

    def unlink(self, parent: Node, name: bytes) -> None:
        """unlink (a durable or open file's bytes move to the orphans folder)."""
        node = self.child(parent, name)
        if node.is_dir:
            raise IsADirectoryError(21, "Is a directory", name)
        self._drop_live(node)

    def rmdir(self, parent: Node, name: bytes) -> None:
        """rmdir (an empty directory only, as always)."""
        node = self.child(parent, name)
        if not node.is_dir:
            raise NotADirectoryError(20, "Not a directory", name)
        os.rmdir(self.path(node))
        del parent.entries[name]
        node.parent = None
        self._collect(node)

    def rename(self, old_parent: Node, old: bytes, new_parent: Node, new: bytes, noreplace: bool) -> None:
        """rename; a file it replaces is dropped as by unlink."""
        node = self.child(old_parent, old)
        target = new_parent.entries.get(new)
        if target is node:
            return
        if target is not None:
            if noreplace:
                raise FileExistsError(17, "File exists", new)
            if target.is_dir != node.is_dir:
                raise (IsADirectoryError(21, "Is a directory", new) if target.is_dir
                       else NotADirectoryError(20, "Not a directory", new))
            if target.is_dir:
                if target.entries:
                    raise OSError(39, "Directory not empty", new)
                os.rmdir(self.path(target))
                del new_parent.entries[new]
                target.parent = None
                self._collect(target)
            else:
                self._drop_live(target)
        n = new_parent
        while n is not None:  # no directory into itself
            if n is node:
                raise OSError(22, "Invalid argument", new)
            n = n.parent
        os.rename(self.path(node), os.path.join(self.path(new_parent), new))
        del old_parent.entries[old]
        new_parent.entries[new] = node
        node.parent, node.name = new_parent, new

    def _drop_live(self, node: Node) -> None:
        path = self.path(node)
        assert node.parent is not None
        del node.parent.entries[node.name]
        node.parent = None
        if node.durable_refs or node.open_count:
            node.orphan = True
            os.rename(path, self.path(node))
        else:
            os.unlink(path)
            self.nodes.pop(node.id, None)

    def _collect(self, node: Node) -> None:
        """Forget a node nothing names, live or durable, and nobody holds open."""
        if node.parent is not None or node.durable_refs or node.open_count or node is self.root:
            return
        if node.is_dir:
            kids, node.durable_entries = node.durable_entries, {}
            for kid in kids.values():
                kid.durable_refs -= 1
                self._collect(kid)
        elif node.orphan:
            try:
                os.unlink(self.path(node))
            except FileNotFoundError:
                pass
        self.nodes.pop(node.id, None)

    # --- contents -------------------------------------------------------------------------------

    def write(self, node: Node, fd: int, offset: int, data: bytes) -> int:
        """pwrite, first saving the durable bytes it overwrites."""
        n = len(data)
        self._save(node, fd, offset, offset + n)
        written = os.pwrite(fd, data, offset)
        w = node.writes
        if w and w[-1][0] + w[-1][1] == offset:
            w[-1][1] += written
        elif written:
            w.append([offset, written])
        return written

    def truncate(self, node: Node, size: int, fd: int | None = None) -> None:
        """ftruncate/truncate, first saving the durable bytes it cuts off."""
        own = fd is None
        if own:
            fd = os.open(self.path(node), os.O_RDWR | os.O_CLOEXEC)
        try:
            live = os.fstat(fd).st_size
            if size < live:
                self._save(node, fd, size, live)
            os.ftruncate(fd, size)
            node.truncated = True
        finally:
            if own:
                os.close(fd)

    def fsync(self, node: Node, fd: int) -> None:
        """fsync/fdatasync of a file: its live bytes become its durable bytes."""
        node.durable_size = os.fstat(fd).st_size
        node.saved, node.undo, node.writes, node.truncated = [], [], [], False
        self.fsyncs += 1

    def fsync_dir(self, node: Node) -> None:
        """fsync of a directory: its live entries become its durable entries."""
        old, node.durable_entries = node.durable_entries, dict(node.entries)
        for kid in node.durable_entries.values():
            kid.durable_refs += 1
        for kid in old.values():
            kid.durable_refs -= 1
            self._collect(kid)
        self.dir_fsyncs += 1

    def _save(self, node: Node, fd: int, start: int, end: int) -> None:
        end = min(end, node.durable_size)
        if start >= end:
            return
        pos = start
        for a, b in node.saved:  # sorted, disjoint
            if b <= pos:
                continue
            if a >= end:
                break
            if a > pos:
                node.undo.append((pos, os.pread(fd, a - pos, pos)))
            pos = max(pos, b)
        if pos < end:
            node.undo.append((pos, os.pread(fd, end - pos, pos)))
        node.saved = _merge(node.saved + [(start, end)])

    def unsynced_bytes(self) -> int:
        """Bytes written to live files since their last fsync."""
        return sum(n for node in self.nodes.values() for _, n in node.writes)

    # --- power cut ------------------------------------------------------------------------------

    def cut(self, rng: random.Random | None = None) -> CutReport:
        """Replace the backing folder's contents with the durable state. With `rng`, every file
        with unsynced writes (and no unsynced truncate) keeps a random-length prefix of them, in
        the order they were written. The model is unusable afterwards (the folder's next user
        starts a new one)."""
        live_paths = {p for p, _ in self._walk(self.root, b"", durable=False)}
        stage = os.path.join(self.state, b"stage")
        os.mkdir(stage)
        placed: dict[int, bytes] = {}
        torn: list[TornWrite] = []
        cut_back: list[str] = []
        forgotten = 0
        durable_paths = []
        for rel, node in self._walk(self.root, b"", durable=True):
            durable_paths.append(rel)
            dest = os.path.join(stage, rel)
            if node.is_dir:
                os.mkdir(dest)
            elif node.id in placed:
                os.link(placed[node.id], dest)
            else:
                unsynced = sum(n for _, n in node.writes)
                kept = self._cut_back(node, rng if unsynced and not node.truncated else None)
                if kept is not None:
                    torn.append(TornWrite(os.fsdecode(rel), unsynced, kept))
                if node.undo or node.writes or node.truncated:
                    cut_back.append(os.fsdecode(rel))
                forgotten += unsynced - (kept or 0)
                os.rename(self.path(node), dest)
                placed[node.id] = dest
        with os.scandir(self.backing) as it:
            for e in list(it):
                if e.name == STATE_DIR:
                    continue
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path)
                else:
                    os.unlink(e.path)
        with os.scandir(stage) as it:
            for e in list(it):
                os.rename(e.path, os.path.join(self.backing, e.name))
        shutil.rmtree(self.state)
        dset = set(durable_paths)
        return CutReport(tuple(sorted(os.fsdecode(p) for p in live_paths - dset)),
                         tuple(sorted(os.fsdecode(p) for p in dset - live_paths)),
                         tuple(cut_back), forgotten, tuple(torn))

    def discard(self) -> None:
        """A clean unmount: the live state stays as it is; only the model's own folder goes."""
        shutil.rmtree(self.state, ignore_errors=True)

    def _walk(self, d: Node, rel: bytes, durable: bool):
        entries = d.durable_entries if durable else d.entries
        for name, node in sorted(entries.items()):
            path = os.path.join(rel, name) if rel else name
            yield path, node
            if node.is_dir:
                yield from self._walk(node, path, durable)

    def _cut_back(self, node: Node, rng: random.Random | None) -> int | None:
        """Bring the node's bytes back to their durable state (plus a torn prefix with `rng`)."""
        fd = os.open(self.path(node), os.O_RDWR | os.O_CLOEXEC)
        try:
            kept_bytes: list[tuple[int, bytes]] = []
            kept = None
            if rng is not None:
                kept = budget = rng.randint(0, sum(n for _, n in node.writes))
                for off, n in node.writes:
                    if budget <= 0:
                        break
                    take = min(n, budget)
                    kept_bytes.append((off, os.pread(fd, take, off)))
                    budget -= take
            for off, old in reversed(node.undo):
                os.pwrite(fd, old, off)
            os.ftruncate(fd, node.durable_size)
            for off, data in kept_bytes:
                os.pwrite(fd, data, off)
            return kept
        finally:
            os.close(fd)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
