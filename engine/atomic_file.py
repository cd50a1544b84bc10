"""Files that appear only once complete: every file the engine replaces is written here.

A temporary file in the target's directory (unnamed where the file system allows, so a crash
leaves nothing), given its mode, flushed, renamed over the target, and the directory flushed:
after a crash the target is the old file or the new one, whole.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from typing import IO, Callable, Iterator, Self

from .errors import InvalidArgument

__all__ = ["Temporary", "atomic_output", "fsync_directory", "name_temporary", "open_temporary",
           "remove_unlocked", "replace_symlink", "write_atomically"]


class Temporary:
    """A new file beside ``path`` that becomes ``path`` when :meth:`commit` renames it there.

    Created with ``mode`` (never wider, even briefly). With ``lock``, it is ``flock``-ed before
    it has a name and for as long as it is open, so that a cleaner of dead temporaries
    (which takes the lock without waiting) never removes a live one; a temporary that had to be
    named from the start is checked once the lock is held. ``target`` is a path other code can
    write to (the name, or ``/proc/self/fd/N`` for an unnamed file).

    Raises:
        InvalidArgument: ``path`` is a directory.
        OSError: the directory does not take new files.
    """

    def __init__(self, path: str | os.PathLike[str], *, mode: int = 0o600,
                 suffix: str = ".part", lock: bool = False) -> None:
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise InvalidArgument(f"{self.path} is a directory")
        self.directory = os.path.dirname(os.path.abspath(self.path))
        self._name = os.path.basename(self.path)
        self._suffix = suffix
        for _ in range(100):
            fd, named = open_temporary(self.directory, self._name, suffix)
            if not lock:
                break
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until close: the file is this process's
            if named is None or _same_file(fd, named):
                break
            os.close(fd)  # a cleaner removed it before the lock was taken: another one
        else:
            raise OSError(f"cannot create a temporary file in {self.directory}")
        self.fd, self.named = fd, named
        try:
            if mode != 0o600:
                os.fchmod(fd, mode)
        except BaseException:
            self.close()
            raise
        self.target = named if named is not None else f"/proc/self/fd/{fd}"

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Writes all of ``data`` (os.write may take less than all)."""
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(self.fd, view):]

    def commit(self, *, fsync: bool = True) -> None:
        """Renames the file over the path (atomic on POSIX); with ``fsync``, flushes the file
        before and the directory after, so the rename survives a power cut."""
        if fsync:
            os.fsync(self.fd)
        if self.named is None:
            self.named = name_temporary(self.fd, self.directory, self._name, self._suffix)
        os.replace(self.named, self.path)
        self.named = None
        if fsync:
            fsync_directory(self.directory)

    def close(self) -> None:
        """Removes the file unless it was renamed into place, and drops the lock."""
        try:
            if self.named is not None:
                try:
                    os.unlink(self.named)
                except FileNotFoundError:
                    pass
                self.named = None
        finally:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@contextmanager
def atomic_output(path: str, *, fsync: bool = False, mode: int = 0o600,
                  before_commit: Callable[[], object] | None = None) -> Iterator[IO[bytes]]:
    """A raw binary file that becomes ``path`` only when the block ends without an exception.

    The data goes to an unnamed file in ``path``'s directory (``O_TMPFILE``: a crash or SIGKILL
    leaves nothing behind), linked under a temporary name and renamed over ``path`` at the end;
    where the file system has no ``O_TMPFILE``, to a hidden temporary file removed on failure.
    The file is created with ``mode`` (0600 unless told).

    Args:
        fsync: flush the file to disk before it is renamed, and the directory after.
        before_commit: called once the file is complete (and flushed), just before the rename
            that makes it appear; an exception it raises cancels the rename. The command line
            stops taking Ctrl-C there: an interrupt before it leaves no file, and none after it
            can turn a finished command into a failure.

    Raises:
        InvalidArgument: ``path`` is a directory.
    """
    tmp = Temporary(path, mode=mode)
    try:
        f = open(tmp.fd, "wb", buffering=0, closefd=False)  # noqa: SIM115
        try:
            yield f
        finally:
            f.close()
        if fsync:
            os.fsync(tmp.fd)
        if before_commit is not None:
            before_commit()
        tmp.commit(fsync=False)
        if fsync:
            fsync_directory(tmp.directory)
    finally:  # a second Ctrl-C during the close still removes the temporary
        tmp.close()


def write_atomically(path: str | os.PathLike[str], data: bytes | bytearray | memoryview, *,
                     mode: int = 0o600, suffix: str = ".part", lock: bool = False) -> None:
    """Replaces ``path`` with ``data``: temporary file created with ``mode``, fsync, rename,
    fsync of the directory. A crash at any point leaves the old file or the new one, whole.

    Raises:
        InvalidArgument: ``path`` is a directory.
        OSError: the file cannot be written.
    """
    with Temporary(path, mode=mode, suffix=suffix, lock=lock) as tmp:
        tmp.write(data)
        tmp.commit()


def replace_symlink(target: str, link: str | os.PathLike[str]) -> None:
    """Makes ``link`` a symbolic link to ``target`` in one rename (readers see the old link or
    the new one, never none), then flushes the directory."""
    link = os.fspath(link)
    directory = os.path.dirname(os.path.abspath(link))
    for _ in range(100):
        tmp = os.path.join(directory, f".{os.path.basename(link)}.{os.urandom(6).hex()}.link")
        try:
            os.symlink(target, tmp)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary name in {directory}")
    try:
        os.replace(tmp, link)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_directory(directory)


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Flushes a directory's entries (a rename in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_temporary(directory: str, name: str, suffix: str = ".part") -> tuple[int, str | None]:
    """A new file in ``directory`` open for writing (mode 0600), and its name: None for an
    unnamed file (``O_TMPFILE``; :func:`name_temporary` gives it one), else a hidden name
    ``.NAME.RANDOM`` + ``suffix`` where the file system has no unnamed files."""
    flag = getattr(os, "O_TMPFILE", 0)
    if flag:
        try:
            return os.open(directory, flag | os.O_WRONLY, 0o600), None
        except OSError:
            pass  # this file system has no unnamed files: a named one below
    fd, named = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=directory)
    return fd, named


def name_temporary(fd: int, directory: str, name: str, suffix: str = ".part") -> str:
    """Links the unnamed file open as ``fd`` into ``directory`` as ``.NAME.RANDOM`` +
    ``suffix`` and returns that path."""
    # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N gives an O_TMPFILE file a name; os.link uses
    # linkat (not link, which would link the symlink itself) only when given a directory fd.
    proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(100):
            candidate = os.path.join(directory, f".{name}.{os.urandom(6).hex()}{suffix}")
            try:
                os.link(str(fd), candidate, src_dir_fd=proc, follow_symlinks=True)
                return candidate
            except FileExistsError:
                continue
    finally:
        os.close(proc)
    raise FileExistsError(f"no free temporary name in {directory}")


def remove_unlocked(path: str) -> None:
    """Deletes the temporary ``path`` if no live process holds its lock (see ``lock`` of
    :class:`Temporary`): the kernel drops a dead process's locks."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return  # gone, a link, or not ours to open: left alone
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # its process is alive
        if _same_file(fd, path):
            os.unlink(path)
    finally:
        os.close(fd)


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except FileNotFoundError:
        return False
