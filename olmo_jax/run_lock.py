"""One trainer per run directory: `RunLock(run_dir)` holds `<run_dir>/.lock` for the life of a run.

The lock is an `fcntl.flock` on that file, which the kernel releases when the holder exits, however it exits
(kill -9 included): a stale lock file left by a dead trainer is simply taken over. The file names its holder
(host and pid), so that a refused trainer can say whom it waited for. On NFS, Linux emulates flock with the
server's byte-range locks (NFSv3 needs lockd, NFSv4 has them built in), which holds across hosts; Lustre
honours it only when mounted with `-o flock` (with `-o localflock` it guards one host only). Where the
filesystem refuses locks altogether the run goes on with a warning: nothing then stops a second trainer.

A run that created its directory and wrote nothing else into it (it failed while starting) removes the lock
file and the directory again, so that a refused start leaves nothing on disk.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
from pathlib import Path

from olmo_jax.errors import RunLockedError

LOCK_NAME = ".lock"

log = logging.getLogger(__name__)


class RunLock:
    """Exclusive use of a run directory, as a context manager; raises RunLockedError when it is in use."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None
        self._created_dir = False

    def __enter__(self) -> RunLock:
        self._created_dir = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = self._lock()
            # The file may have been removed (by a holder that created the directory) between open and flock:
            # a lock on a file that no longer has the name guards nothing, so take the new file's instead.
            if fd is None or os.fstat(fd).st_ino == _inode(self.path):
                break
            os.close(fd)
        if fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode() + b"\n", 0)
        self._fd = fd
        return self

    def _lock(self) -> int | None:
        """The locked file's descriptor; None where the filesystem supports no locks (after a warning)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"run directory {self.path.parent} is in use by another trainer ({holder}); "
                "wait for it to finish, stop it, or use another run directory"
            ) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise
            log.warning("cannot lock %s (%s): a second trainer on this run would not be refused", self.path, e)
            os.close(fd)
            return None

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is None:
            return
        remove = self._created_dir and [p.name for p in self.path.parent.iterdir()] == [LOCK_NAME]
        if remove:
            self.path.unlink()  # while still holding the lock: see the inode check in __enter__
        os.close(self._fd)  # releases the lock; otherwise the file stays, naming the last holder
        self._fd = None
        if remove:
            try:
                self.path.parent.rmdir()
            except OSError:  # something appeared meanwhile: it is not ours to remove
                pass


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _holder(fd: int) -> str:
    """ "pid P on host H" as the holder wrote it into the lock file."""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {int(data['pid'])} on host {data['host']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "holder unknown: its lock file names none"
