"""Where a command will write, checked before it does any work.

A command that writes (``collect -o``, ``figures -o``, ``sweep launch``'s, ``study``'s and ``train``'s ``runs_dir``)
checks its output paths first, so a path it cannot write is one line (:class:`~.errors.UserError`:
the argument, the bad value, what is allowed) and exit 2 before anything is read, trained, submitted or
created, never an ``OSError`` traceback after the work is done. Nothing here creates anything.

A path is writable when

* no component is longer than :data:`NAME_MAX` bytes (255 on ext4, XFS, btrfs, tmpfs, NFS, Lustre, GPFS);
* every existing component but the last is a folder (``-o results.parquet/x.csv`` is refused: that
  folder is a file);
* the folder it will be written into — the path itself for a folder, its parent for a file, or the
  nearest one that exists when they are still to be made — is writable by this process: not on a
  read-only file system, not denied by permissions (``os.access``, which also answers for root on a
  read-only mount).

``collect -o`` takes a table name ending in ``.parquet`` or ``.csv`` (:data:`TABLE_SUFFIXES`); the file
is written in the format its name says.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import UserError

NAME_MAX = 255  # bytes per file or folder name on every file system the project runs on
TABLE_SUFFIXES = (".parquet", ".csv")


def _named(arg: str, value: str) -> str:
    """``runs_dir=/x`` for a config key, ``collect -o /x`` for a command-line option."""
    if len(value) > 120:  # a name over 255 bytes: enough of it to recognise, on one readable line
        value = f"{value[:60]}…{value[-30:]}"
    return f"{arg} {value}" if arg.startswith("-") or " " in arg else f"{arg}={value}"


def _short(part: str, n: int = 24) -> str:
    return part if len(part) <= n else f"{part[:n]}…"


def _why_not_writable(folder: Path) -> str | None:
    """Why this process cannot create files in an existing folder, or None when it can."""
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "it is on a read-only file system"
    except OSError:
        pass
    return "permission denied"


def _stat(path: Path) -> os.stat_result | None:
    """``os.stat`` of ``path``, None when it does not exist (or a folder on its way is a file)."""
    try:
        return path.stat()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise


def check_names(path: str | os.PathLike, arg: str) -> None:
    """Every file or folder name in ``path`` fits the file system (:data:`NAME_MAX` bytes); :class:`UserError`
    naming ``arg`` otherwise. Looks at the string only (a config is checked before its paths exist)."""
    value = str(path)
    for part in Path(value).parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise UserError(f"{_named(arg, value)}: the name {_short(part)!r} is {size} bytes long; allowed: at most "
                            f"{NAME_MAX} bytes per file or folder name")


def _check(path: Path, arg: str, value: str, expected: str) -> Path:
    """Common checks; returns the nearest existing folder at or above ``path`` (``path`` included)."""
    check_names(value, arg)
    node = path
    while True:
        try:
            st = _stat(node)
        except OSError as exc:
            raise UserError(f"{_named(arg, value)}: cannot look at {node} ({exc.strerror or exc}); "
                            f"expected {expected}") from None
        if st is not None:
            break
        if node.parent == node:
            break
        node = node.parent
    return node


def check_folder(path: str | os.PathLike, arg: str, *, beside: bool = False) -> Path:
    """``path`` is, or can be made as, a folder this process writes into; :class:`UserError` naming
    ``arg`` otherwise. ``beside``: files are also written next to it (a temp folder renamed into place),
    so its parent must be writable too. Creates nothing; returns ``path``."""
    value = str(path)
    path = Path(os.path.abspath(os.path.expanduser(value)))
    expected = "a folder that exists or can be created, in a writable place"
    node = _check(path, arg, value, expected)
    if node == path and not path.is_dir():
        raise UserError(f"{_named(arg, value)}: it is a file, not a folder; expected {expected}")
    if node != path and not node.is_dir():
        raise UserError(f"{_named(arg, value)}: {node} is a file, not a folder; expected {expected}")
    targets = [node] if node != path or not beside else [node, node.parent]
    for folder in targets:
        why = _why_not_writable(folder)
        if why:
            what = "cannot write into it" if folder == path else f"cannot create it or write beside it in {folder}"
            raise UserError(f"{_named(arg, value)}: {what} ({why}); expected {expected}")
    return Path(value)


def check_file(path: str | os.PathLike, arg: str, *, suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` names a file this process can write (replace) in a folder that exists or can be made;
    :class:`UserError` naming ``arg`` otherwise. ``suffixes``: the name must end in one of them. Creates
    nothing; returns ``path``."""
    value = str(path)
    if suffixes and Path(value).suffix.lower() not in suffixes:
        raise UserError(f"{_named(arg, value)}: a table is written as {' or '.join(suffixes)}, chosen by the file name's "
                        f"ending; allowed: a name ending in {' or '.join(suffixes)}")
    path = Path(os.path.abspath(os.path.expanduser(value)))
    expected = "a file path in a folder that exists or can be created, in a writable place"
    node = _check(path, arg, value, expected)
    if node == path:
        if path.is_dir():
            raise UserError(f"{_named(arg, value)}: it is a folder; expected {expected}")
        node = path.parent
    elif not node.is_dir():
        raise UserError(f"{_named(arg, value)}: {node} is a file, not a folder; expected {expected}")
    why = _why_not_writable(node)
    if why:
        raise UserError(f"{_named(arg, value)}: cannot write into {node} ({why}); expected {expected}")
    return Path(value)


def check_runs_dir(path: str | os.PathLike, *, slurm: bool = False) -> Path:
    """The ``runs_dir`` of a launch: a folder this process can create and write run directories in,
    with no ``%`` in it when SLURM writes its logs there (sbatch expands ``%j``, ``%A``, ``%x``... in log
    paths, so the job's log would go elsewhere and the cell would be lost without a trace)."""
    value = str(path)
    if slurm and "%" in value:
        raise UserError(f"runs_dir={value}: it holds '%', which SLURM expands in the job's log path (%j, %A, %x, …), "
                        f"so the job's log would be lost; allowed: a path without '%'")
    return check_folder(path, "runs_dir")


__all__ = ["NAME_MAX", "TABLE_SUFFIXES", "check_file", "check_folder", "check_names", "check_runs_dir"]
