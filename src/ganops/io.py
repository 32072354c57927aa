"""Atomic file writes and content hashes shared by every stage.

Every artifact a stage writes goes through :func:`atomic_write`, so a killed process or a full disk never leaves a
half-written checkpoint, array or report behind: the bytes go to a temporary file in the same directory, are
fsync'ed, and are then renamed over the target (rename is atomic on POSIX within one filesystem).

A write that fails for a reason outside the program (disk full, quota, permission denied, read-only filesystem, a
parent path that is a file) raises :class:`OutputWriteError`: an ``OSError`` with the same ``errno`` whose message
names the output path and says what to do. The CLI shows it as a one-line error and exits 1.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_FIX_PATH = "remove or rename that file, or choose another output path"
_ADVICE = {
    errno.ENOSPC: "the disk is full: free space on that filesystem or point the output at one with room",
    errno.EDQUOT: "the disk quota is used up: free space or point the output at another filesystem",
    errno.EFBIG: "the file exceeds the size limit of this process or filesystem (see `ulimit -f`)",
    errno.EACCES: "permission denied: fix the permissions of {folder} (or run as its owner) or choose another "
                  "output path",
    errno.EPERM: "operation not permitted: fix the permissions of {folder} or choose another output path",
    errno.EROFS: "the filesystem is read-only: choose an output path on a writable filesystem",
    errno.ENOTDIR: f"a parent of the path is a file, not a folder: {_FIX_PATH}",
    errno.EEXIST: f"a parent of the path exists and is not a folder: {_FIX_PATH}",
    errno.EISDIR: "the path is a folder: remove it or choose another output file name",
    errno.EINVAL: "the path is not a regular file (a device, FIFO or socket): choose a regular file path",
}
# Errors that, raised inside the ``with atomic_write(...)`` block, can only come from writing the output file.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class OutputWriteError(OSError):
    """An output could not be written: disk full, quota, permission denied, read-only filesystem, or a parent
    path that is a file. ``errno`` is the OS error's, ``filename`` the output path, ``reason`` the OS's text; the
    message names the path and what to do. Whatever was at the path before is unchanged, and no temporary file is
    left behind."""

    def __init__(self, code: int, path: str | Path, reason: str) -> None:
        folder = Path(path).parent
        advice = _ADVICE.get(code, "check that {folder} exists, is writable and has free space").format(folder=folder)
        super().__init__(code, f"cannot write {path}: {reason}; {advice}")
        self.filename = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return str(self.strerror)


def output_error(err: OSError, path: str | Path) -> OutputWriteError:
    """``err`` (raised while writing output ``path``) as an :class:`OutputWriteError` naming ``path``.

    An :class:`OutputWriteError` about another path (e.g. a file inside a temporary directory that replaces
    ``path`` as a whole) is re-targeted at ``path``, keeping its reason.
    """
    if isinstance(err, OutputWriteError):
        if err.filename == str(path):
            return err
        reason = err.reason
    else:
        reason = err.strerror or str(err)
        if err.filename is not None and str(err.filename) != str(path):
            reason += f" ({err.filename})"
    new = OutputWriteError(err.errno if err.errno is not None else errno.EIO, path, reason)
    new.__cause__ = err
    return new


def _umask() -> int:
    """The process umask (read without changing it where /proc allows; else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` only if the block succeeds.

    ``path`` may be a new file or an existing regular file (or a symlink, which is replaced, not followed).

    Raises:
        OutputWriteError: the folder cannot be created or written (disk full, permission denied, a parent is a
            file), or ``path`` is a folder or a device; ``path`` is untouched and no temporary file remains.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        info = None
    except OSError as err:  # e.g. ENOTDIR: a parent is a file
        raise output_error(err, path) from err
    if info is not None and not stat.S_ISREG(info.st_mode):
        code = errno.EISDIR if stat.S_ISDIR(info.st_mode) else errno.EINVAL
        raise OutputWriteError(code, path, "exists and is not a regular file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise output_error(err, path) from err
    # mkstemp creates 0600; give the output the mode a plain open() would (or the replaced file's own mode).
    with contextlib.suppress(OSError):
        os.chmod(tmp, stat.S_IMODE(info.st_mode) if info is not None else 0o666 & ~_umask())
    committing = False
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            committing = True
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, OutputWriteError) and (
                committing or exc.errno in _WRITE_ERRNOS):
            raise output_error(exc, path) from exc
        raise


# What atomic_write's mkstemp names look like: ".<target name>.<8 random chars>.tmp".
_ATOMIC_TEMP = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete the temporary files ``atomic_write`` leaves in ``directory`` (not below it) when its process is killed
    mid-write (SIGKILL, power loss): files named ``.<name>.<8 random chars>.tmp``. Other files are not touched.

    Call it only while no other process writes into ``directory`` (e.g. at the start of a run that owns it).
    Returns the removed paths; a missing directory removes nothing. Files that vanish or cannot be removed meanwhile
    are skipped.
    """
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in directory.glob(".*.tmp"):
        if _ATOMIC_TEMP.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (keys sorted for stable diffs)."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()
