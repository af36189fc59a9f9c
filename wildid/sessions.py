"""Private work folders, one per browser session, with a disk quota.

Uploads, unpacked zips, batch results and uploaded results CSVs of one session live in its
own folder under the sessions root (``WILDID_SESSIONS``, default
``<tmp>/wildid-sessions-<uid>``, mode 0700), outside the allowed data folder, so no other
session can list or open them by typing a path.  The folder goes away when the session ends:
Streamlit has no public session-end hook, so the app keeps a :class:`SessionSpace` in
``st.session_state`` and ``weakref.finalize`` removes the folder when the session (and with
it this object) is dropped, or at interpreter exit.  Folders left behind by a killed server
are swept at the next start-up: each folder name starts with the server's process id.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tempfile
import weakref
from pathlib import Path

from wildid.errors import DataError
from wildid.guard import check_name

SESSIONS_ENV = "WILDID_SESSIONS"
QUOTA_ENV = "WILDID_SESSION_QUOTA_BYTES"
# 2 GiB per session: two zips at the unpack cap, or ~40 full-size uploads.  A workshop room of
# 20 people then needs at most 40 GB of temporary disk (the 2-core test machine has 73 GB free).
DEFAULT_QUOTA = 2 * 1024**3


def sessions_root() -> Path:
    """The folder holding every session folder; created private (0700) and checked to be ours."""
    text = os.environ.get(SESSIONS_ENV, "").strip()
    root = Path(text).expanduser() if text else Path(tempfile.gettempdir()) / f"wildid-sessions-{os.getuid()}"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(root)
    # In a shared /tmp another user could have made this folder (or a link) first.
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise DataError(f"{root} is not a private folder of this user; set {SESSIONS_ENV} to another folder")
    if info.st_mode & 0o077:
        os.chmod(root, 0o700)
    return root


def quota_bytes() -> int:
    return int(os.environ.get(QUOTA_ENV, DEFAULT_QUOTA))


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` (links are not followed)."""
    total = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            try:
                info = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total


def _remove(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)


class SessionSpace:
    """One session's private folder; removed when this object is garbage-collected or closed."""

    def __init__(self, root: Path | None = None, quota: int | None = None):
        root = Path(root) if root is not None else sessions_root()
        self.folder = root / f"{os.getpid()}-{secrets.token_hex(8)}"
        self.folder.mkdir(mode=0o700)
        self.quota = quota_bytes() if quota is None else int(quota)
        # Paths this session created in shared places (exports, models): the only ones it may
        # replace later.
        self.created: set[str] = set()
        self._finalizer = weakref.finalize(self, _remove, str(self.folder))

    def sub(self, name: str, fresh: bool = False) -> Path:
        """``folder/name`` (a checked name), emptied first when ``fresh``."""
        path = self.folder / check_name(name, "work folder")
        if fresh:
            shutil.rmtree(path, ignore_errors=True)
        path.mkdir(exist_ok=True)
        return path

    def used(self) -> int:
        return folder_bytes(self.folder)

    def reserve(self, incoming: int, replacing: Path | None = None) -> None:
        """DataError unless ``incoming`` more bytes fit in this session's quota (the bytes under
        ``replacing``, which the caller is about to clear, do not count)."""
        used = self.used() - (folder_bytes(replacing) if replacing is not None and replacing.exists() else 0)
        if used + incoming > self.quota:
            raise DataError(
                f"this session would use {(used + incoming) / 1e6:.0f} MB, over its {self.quota / 1e6:.0f} MB "
                f"work-space quota; download your results and start a new session (reload the page)"
            )

    def remember(self, path: Path) -> None:
        self.created.add(str(Path(path).resolve()))

    def created_here(self, path: Path) -> bool:
        return str(Path(path).resolve()) in self.created

    def close(self) -> None:
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self._finalizer.alive


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(root: Path | None = None) -> list[Path]:
    """Remove session folders whose server process is gone (a crash, kill -9); returns them."""
    root = Path(root) if root is not None else sessions_root()
    removed = []
    for entry in root.iterdir():
        head = entry.name.split("-", 1)[0]
        if not head.isdigit() or entry.is_symlink() or not entry.is_dir():
            continue
        if int(head) != os.getpid() and not _pid_alive(int(head)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
