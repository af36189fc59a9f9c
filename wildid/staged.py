"""Replace a whole folder at once: build the new one beside it, then swap it in.

A model folder (weights, card, timm config) or a Camtrap DP package is several files that only
make sense together; renaming them into place one by one leaves a mix of two generations when
the process is killed between two renames (an old card over new weights whose class count
differs).  :func:`staged_folder` instead yields a hidden staging folder beside the target; when
the block ends, entries of the old folder that the new one does not write are carried over
(hard links, a copy where the file system has none), everything is fsync'ed, and the staging
folder takes the target's place:

- on Linux in one step, ``renameat2(RENAME_EXCHANGE)``: a reader or a ``kill -9`` at any moment
  sees the old folder or the new one, never a mix and never no folder;
- where that call does not exist or the file system refuses it, two renames (the old folder to
  a hidden ``.NAME.old-*``, the new one in): a kill between them leaves no folder under the name
  for that moment, with both generations whole under hidden names.

A kill leaves at most a hidden ``.NAME.new-PID-*`` / ``.NAME.old-PID-*`` folder, removed by
the next staged write of the same target once that process is gone.  Python's standard library
has no directory exchange; the ctypes call below is the whole of it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from wildid.errors import DataError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@contextmanager
def staged_folder(target: Path | str, carry_over: Callable[[str], bool] = lambda name: True) -> Iterator[Path]:
    """Yield an empty folder to write into; on a clean exit it replaces ``target`` whole.

    ``carry_over(name)`` says which entries of an existing ``target`` that the new folder does not
    hold are kept (default: all).  On an exception nothing changes and the staging folder is removed.
    """
    target = Path(target)
    if target.is_symlink():
        target = target.resolve()
    if target.exists() and not target.is_dir():
        raise DataError(f"{target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    staging = _new_hidden(target, "new")
    try:
        yield staging
        if target.is_dir():
            _carry_over(target, staging, carry_over)
        _sync_tree(staging)
        _swap_in(staging, target)
        fsync_dir(target.parent)
    finally:
        # After an exchange the staging name holds the previous generation; otherwise it is gone or unused.
        shutil.rmtree(staging, ignore_errors=True)


def remove_leftovers(target: Path) -> list[Path]:
    """Remove hidden staging / previous-generation folders of ``target`` left by a process that is gone."""
    removed = []
    for kind in ("new", "old"):
        for path in target.parent.glob(f".{target.name}.{kind}-*-*"):
            pid = path.name[len(f".{target.name}.{kind}-"):].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)) and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _new_hidden(target: Path, kind: str) -> Path:
    """A new hidden folder beside ``target``, created with the default mode (the umask applies)."""
    while True:
        path = target.parent / f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def _carry_over(old: Path, new: Path, keep: Callable[[str], bool]) -> None:
    for entry in sorted(old.iterdir()):
        if (new / entry.name).exists() or (new / entry.name).is_symlink() or not keep(entry.name):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), new / entry.name)
        elif entry.is_dir():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, new / entry.name)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _sync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (a kill does not need it; a power cut does)."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so a rename or a new entry in it survives a power cut (quietly skipped where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory
        pass
    finally:
        os.close(fd)


def _swap_in(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
        return
    if exchange(staging, target):
        return
    previous = _new_hidden(target, "old")
    os.rmdir(previous)
    os.rename(target, previous)
    os.rename(staging, target)
    shutil.rmtree(previous, ignore_errors=True)


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))
