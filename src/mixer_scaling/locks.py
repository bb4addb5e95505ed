"""One writer per run directory (and one launch of a sweep at a time), enforced by the file system.

A run's rank 0 holds ``<run_dir>/.lock`` for its whole attempt, taken before anything in the directory
is read, modified and written (the record, the checkpoints and their temp files, ``metrics.jsonl``). A
second process that starts the same run is refused in one line naming the holder (exit code
:data:`EXIT_BUSY`) or, with ``wait_for_lock=true``, waits for it; either way it never writes. ``sweep
launch`` holds ``<runs_dir>/.sweeps/<sweep>.lock`` while it decides which cells to submit and records
the submissions, so two launches of one sweep never submit a cell twice.

**Which lock, and why it is safe on a cluster's shared file system.** :func:`fcntl.lockf`: a POSIX
record lock (``fcntl(F_SETLK)``, exclusive, whole file) on a file descriptor opened for writing.

* It is the lock that shared file systems implement across nodes: NFSv3 (through the NLM lock
  manager), NFSv4 (in the protocol), Lustre mounted with ``-o flock``, GPFS/Spectrum Scale, CephFS,
  BeeGFS with global file locks. BSD ``flock()`` is not used: on some NFS clients and FUSE file systems
  it is local to one node (two nodes would both "hold" it), and on Linux's NFS it is emulated with
  POSIX locks anyway.
* It is released by the kernel when the process ends, however it ends: SIGKILL, out of memory, a crash.
  A stale lock cannot outlive its holder, so there is nothing to clean up and no pid file to second-guess.
  (When a whole node dies, the server frees its locks: NFSv4 and Lustre when its lease expires or it is
  evicted, NFSv3 when the node comes back and its lock daemon says it rebooted.)
* Where the file system refuses locks (``ENOLCK``, ``ENOSYS``, ``EOPNOTSUPP``: NFS without a lock
  daemon, Lustre mounted without ``flock``) a run still starts, without the guarantee, and says so in its
  record's events.

POSIX locks belong to a *process* and are dropped when that process closes *any* descriptor of the file;
they also never conflict with the same process's own locks. So this module keeps the locks this process
holds (``_HELD``) and never opens a file it holds a lock on again; asking for a lock this process already
holds is refused like any other holder. Whoever holds a lock writes into the file who it is (pid, host,
SLURM job, start time, one JSON line); :func:`holder` asks the kernel (``F_GETLK``) whether a live
process holds it, without taking it, and reads that line.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"  # in a run directory
# Exit status of a run refused because another live process holds its run directory (EX_UNAVAILABLE in
# sysexits.h): not bad input (2), not an interrupted run (75). The cell is running elsewhere.
EXIT_BUSY = 69

_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
_BUSY = {errno.EACCES, errno.EAGAIN}
# A failed non-blocking attempt is retried this long before the lock counts as held: where F_GETLK is not
# available, holder() probes with a shared lock for a few microseconds (never mistaken for a writer).
GRACE_S = 0.3

# struct flock for F_GETLK: Linux (64-bit) and macOS/BSD layouts; elsewhere holder() probes instead.
if sys.platform.startswith("linux") and sys.maxsize > 2**32:
    _FLOCK = struct.Struct("@hhqqi4x")  # l_type, l_whence, l_start, l_len, l_pid (+ padding: 32 bytes)
    _FIELDS = ("type", "whence", "start", "len", "pid")
elif sys.platform == "darwin":
    _FLOCK = struct.Struct("@qqihh")    # l_start, l_len, l_pid, l_type, l_whence
    _FIELDS = ("start", "len", "pid", "type", "whence")
else:
    _FLOCK, _FIELDS = None, ()


class Busy(Exception):
    """Another live process holds the lock; ``holder`` is what it wrote into the lock file ({} if nothing yet)."""

    def __init__(self, path, holder: dict | None = None):
        super().__init__(f"{path} is held by {describe(holder or {})}")
        self.path, self.holder = path, holder or {}


class RunLocked(Exception):
    """A run directory is held by another live process: this process must not write to it. The message is
    the one line a user sees."""


_HELD: dict[str, "Lock"] = {}


class Lock:
    """A held lock (release it, or leave a ``with`` block); ``problem`` says why a lock could not be taken
    at all on this file system (then nothing is held and ``fd`` is None)."""

    def __init__(self, path: Path, fd: int | None, info: dict | None = None, problem: str | None = None):
        self.path, self.fd, self.info, self.problem = Path(path), fd, info or {}, problem

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self, remove: bool = False) -> None:
        """Give the lock up (idempotent). ``remove``: unlink the lock file first, while still holding it,
        so no one can hold it meanwhile (acquirers check that the file they locked is still the path's)."""
        if self.fd is None:
            return
        _HELD.pop(_key(self.path), None)
        if remove:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _key(path: Path) -> str:
    return os.path.realpath(path)


def whoami(**extra) -> dict:
    """What a holder writes into its lock file."""
    env = os.environ
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if "SLURM_JOB_ID" in env:
        info["slurm_job"] = (f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
                             if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env else env["SLURM_JOB_ID"])
    return {**info, **extra}


def describe(info: dict) -> str:
    """``pid 1234 on host node7 (SLURM job 5678_3) since 2026-12-06T08:12:03``, from a holder's line."""
    if not info.get("pid"):
        return "another process (its lock file names no holder)"
    out = f"pid {info['pid']} on host {info.get('host', '?')}"
    if info.get("slurm_job"):
        out += f" (SLURM job {info['slurm_job']})"
    if info.get("started_at"):
        out += f" since {info['started_at']}"
    return out


def acquire(path: Path, *, wait: bool = False, on_wait: Callable[[dict], None] | None = None,
            info: dict | None = None) -> Lock:
    """Take the exclusive lock on ``path`` (created if missing) and write ``info`` (default :func:`whoami`)
    into it. Held by another process (or by this one): :class:`Busy`, or with ``wait`` block until it is
    free, calling ``on_wait(holder)`` once first. A file system without locks: a :class:`Lock` that holds
    nothing, with its ``problem``."""
    path = Path(path)
    if _key(path) in _HELD:
        raise Busy(path, _HELD[_key(path)].info)
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            got = _try_lock(fd, GRACE_S)
            if not got:
                holder_info = _read_info(path)
                if not wait:
                    raise Busy(path, holder_info)
                if on_wait and not waited:
                    on_wait(holder_info)
                waited = True
                fcntl.lockf(fd, fcntl.LOCK_EX)  # blocks until the holder releases it or dies
        except OSError as exc:
            os.close(fd)
            if exc.errno in _UNSUPPORTED:
                return Lock(path, None, problem=f"no lock on {path}: the file system refuses fcntl locks "
                                                f"({os.strerror(exc.errno)}); one writer at a time is not enforced")
            raise
        except BaseException:
            os.close(fd)
            raise
        # The path may have been removed (a launch that stopped on bad input cleans up) between open and lock.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        lock = Lock(path, fd, info or whoami())
        try:
            data = (json.dumps(lock.info, sort_keys=True) + "\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)  # so a reader on another node sees it (NFS close-to-open)
        except OSError as exc:  # the lock holds even if its note cannot be written (disk full)
            log.warning("could not write the holder into %s: %s", path, exc)
        _HELD[_key(path)] = lock
        return lock


def _try_lock(fd: int, grace: float) -> bool:
    deadline = time.monotonic() + grace
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in _BUSY:
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _read_info(path: Path, patience: float = 1.0) -> dict:
    """The holder's line; it is written just after the lock is taken, so an empty file is read again for a
    moment. Never called on a file this process holds (closing a descriptor would drop the lock)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            with open(path, "rb") as f:
                info = json.loads(f.read().decode() or "null")
            if isinstance(info, dict) and info.get("pid"):
                return info
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return {}
        time.sleep(0.02)


def holder(path: Path) -> dict | None:
    """Who holds the lock on ``path``, if another live process does (what it wrote, ``{}`` if nothing
    yet); None when it is free, held by this process, or there is no lock file. Takes no lock (F_GETLK)."""
    path = Path(path)
    if _key(path) in _HELD:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        locked = _locked_by_other(fd)
    finally:
        os.close(fd)
    return _read_info(path) if locked else None


def _locked_by_other(fd: int) -> bool:
    if _FLOCK is not None:
        values = dict.fromkeys(_FIELDS, 0)
        values.update(type=fcntl.F_WRLCK, whence=os.SEEK_SET)
        try:
            out = fcntl.fcntl(fd, fcntl.F_GETLK, _FLOCK.pack(*(values[k] for k in _FIELDS)))
        except OSError:  # a file system without locks: nobody can hold one
            return False
        return dict(zip(_FIELDS, _FLOCK.unpack(out)))["type"] != fcntl.F_UNLCK
    try:  # elsewhere: a shared lock for an instant (acquire's GRACE_S covers a writer arriving meanwhile)
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in _BUSY
    fcntl.lockf(fd, fcntl.LOCK_UN)
    return False


# ---------------------------------------------------------------------------------------------
# Run directories
# ---------------------------------------------------------------------------------------------


def lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / LOCK_FILE


def hold_run(run_dir: Path, run_id: str, *, wait: bool = False) -> Lock:
    """Become the one writer of ``run_dir`` (created if missing) for this attempt; :class:`RunLocked` with
    the line to show when another live process is it (with ``wait``: once it has ended)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    def waiting(info: dict) -> None:
        log.warning("run %s is being trained by %s; waiting for it to end (wait_for_lock=true)", run_id,
                    describe(info))

    try:
        return acquire(lock_path(run_dir), wait=wait, on_wait=waiting, info=whoami(run_id=run_id))
    except Busy as busy:
        raise RunLocked(f"run {run_id} is being trained by {describe(busy.holder)}; not starting a second "
                        f"writer (wait_for_lock=true waits)") from None


def run_holder(run_dir: Path) -> dict | None:
    """The live process holding ``run_dir`` other than this one (see :func:`holder`), or None."""
    return holder(lock_path(run_dir))
