"""The power-cut file system's FUSE operations (pyfuse3, on Trio): a pass-through over the
backing folder that tells the DurableModel about every write, truncate, fsync and entry change.

Each handler runs to completion without awaiting, so the model sees one operation at a time.
Once `freeze()` is called every request fails with EIO, as a disk without power would answer.
"""

from __future__ import annotations

import errno
import functools
import os
from typing import Any, Callable

import pyfuse3

from capsync.runtime.powercut.model import DurableModel, Node

#: Seconds the kernel may cache names and attributes: only this process changes the tree, so
#: caching is safe, and it saves a round trip per path lookup.
CACHE_TIMEOUT_S = 1.0


def _op(fn: Callable[..., Any]) -> Callable[..., Any]:
    """An OSError becomes the FUSE error of its errno; a frozen file system answers EIO."""

    @functools.wraps(fn)
    async def wrapper(self: PowerCutOperations, *args: Any) -> Any:
        if self.frozen:
            raise pyfuse3.FUSEError(errno.EIO)
        try:
            return fn(self, *args)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except KeyError:  # an inode the model no longer knows
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    return wrapper


class PowerCutOperations(pyfuse3.Operations):
    """pyfuse3 operations over a DurableModel (see the module docstring)."""

    supports_dot_lookup = False
    enable_writeback_cache = False  # every write reaches us when the program makes it

    def __init__(self, model: DurableModel) -> None:
        super().__init__()
        self.model = model
        self.frozen = False
        self._files: dict[int, tuple[Node, int]] = {}  # fh (= backing fd) -> (node, fd)
        self.writes = 0

    def freeze(self) -> None:
        """Stop serving: from now on every request fails with EIO."""
        self.frozen = True

    def close_files(self) -> None:
        """Close every backing fd still open (after unmount)."""
        for _, fd in self._files.values():
            os.close(fd)
        self._files.clear()

    # --- helpers --------------------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        return self.model.nodes[inode]

    def _attrs(self, node: Node, st: os.stat_result | None = None) -> pyfuse3.EntryAttributes:
        st = st or os.lstat(self.model.path(node))
        a = pyfuse3.EntryAttributes()
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_atime_ns",
                     "st_mtime_ns", "st_ctime_ns"):
            setattr(a, name, getattr(st, name))
        a.st_blksize, a.st_blocks = st.st_blksize, st.st_blocks
        a.st_ino = node.id
        a.generation = 0
        a.entry_timeout = a.attr_timeout = CACHE_TIMEOUT_S
        return a

    # --- names ----------------------------------------------------------------------------------

    @_op
    def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._attrs(self.model.child(self._node(parent_inode), name))

    async def forget(self, inode_list: Any) -> None:
        pass  # the model keeps a node while anything names it, live or durable

    @_op
    def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._attrs(self._node(inode))

    @_op
    def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if fields.update_size:
            self.model.truncate(node, attr.st_size, self._files[fh][1] if fh in self._files else None)
        path = self.model.path(node)
        if fields.update_mode:
            os.chmod(path, attr.st_mode & 0o7777)
        if fields.update_uid or fields.update_gid:
            os.chown(path, attr.st_uid if fields.update_uid else -1, attr.st_gid if fields.update_gid else -1)
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(path)
            os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                               attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))
        return self._attrs(node)

    @_op
    def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._attrs(self.model.mkdir(self._node(parent_inode), name, mode & 0o7777))

    @_op
    def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self.model.unlink(self._node(parent_inode), name)

    @_op
    def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self.model.rmdir(self._node(parent_inode), name)

    @_op
    def rename(self, p_old: int, old: bytes, p_new: int, new: bytes, flags: int, ctx: Any) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise OSError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        self.model.rename(self._node(p_old), old, self._node(p_new), new, bool(flags & pyfuse3.RENAME_NOREPLACE))

    @_op
    def opendir(self, inode: int, ctx: Any) -> int:
        if not self._node(inode).is_dir:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory")
        return inode

    @_op
    def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries = sorted(self._node(fh).entries.items())
        for i in range(start_id, len(entries)):
            name, node = entries[i]
            try:
                attrs = self._attrs(node)
            except FileNotFoundError:
                continue
            if not pyfuse3.readdir_reply(token, name, attrs, i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        pass

    @_op
    def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.model.fsync_dir(self._node(fh))

    @_op
    def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.model.backing)
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail",
                     "f_namemax"):
            setattr(out, name, getattr(st, name))
        return out

    # --- files ----------------------------------------------------------------------------------

    @_op
    def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        node, fd = self.model.create(self._node(parent_inode), name, mode & 0o7777, flags)
        self._files[fd] = (node, fd)
        return pyfuse3.FileInfo(fh=fd), self._attrs(node, os.fstat(fd))

    @_op
    def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.is_dir:
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        fd = self.model.open(node, flags)
        self._files[fd] = (node, fd)
        return pyfuse3.FileInfo(fh=fd)

    @_op
    def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(self._files[fh][1], size, off)

    @_op
    def write(self, fh: int, off: int, buf: bytes) -> int:
        node, fd = self._files[fh]
        self.writes += 1
        return self.model.write(node, fd, off, buf)

    async def flush(self, fh: int) -> None:
        pass  # close() is not a sync

    async def release(self, fh: int) -> None:
        entry = self._files.pop(fh, None)
        if entry is not None:
            self.model.release(*entry)

    @_op
    def fsync(self, fh: int, datasync: bool) -> None:
        self.model.fsync(*self._files[fh])
