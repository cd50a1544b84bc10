"""Output files that appear only once complete (used by the file and column commands)."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from .errors import InvalidArgument

__all__ = ["atomic_output", "name_temporary", "open_temporary"]


@contextmanager
def atomic_output(path: str, *, fsync: bool = False,
                  before_commit: Callable[[], Any] | None = None) -> Iterator[Any]:
    """A raw binary file that becomes ``path`` only when the block ends without an exception.

    The data goes to an unnamed file in ``path``'s directory (``O_TMPFILE``: a crash or SIGKILL
    leaves nothing behind), linked under a temporary name and renamed over ``path`` at the end;
    where the file system has no ``O_TMPFILE``, to a hidden temporary file removed on failure.
    The file is created with mode 0600.

    Args:
        fsync: flush the file to disk before it is renamed.
        before_commit: called once the file is complete (and flushed), just before the rename
            that makes it appear; an exception it raises cancels the rename. The command line
            stops taking Ctrl-C there: an interrupt before it leaves no file, and none after it
            can turn a finished command into a failure.

    Raises:
        InvalidArgument: ``path`` is a directory.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InvalidArgument(f"{path} is a directory")
    fd, named = open_temporary(directory, os.path.basename(path))
    f = open(fd, "wb", buffering=0)  # noqa: SIM115
    done = False
    try:
        yield f
        if fsync:
            os.fsync(fd)
        if before_commit is not None:
            before_commit()
        if named is None:
            named = name_temporary(fd, directory, os.path.basename(path))
        os.replace(named, path)
        done = True
    finally:
        try:
            f.close()
        finally:  # a second Ctrl-C during the close still removes the temporary
            if not done and named is not None:
                try:
                    os.unlink(named)
                except FileNotFoundError:
                    pass


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
