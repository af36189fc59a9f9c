"""The one path guard and the one name check.

Every page and app-side helper that takes a path from a person, or from an uploaded file
(a results CSV, a report JSON, a labelled-data CSV, an export target), passes it through
:func:`check_path`; every name that becomes a folder or file name (a model, an export, a
session folder) passes :func:`check_name`.  The rules, in one place:

- The allowed folder is ``WILDID_ALLOWED_ROOT``, by default ``~/wildid-data`` (created on
  first use), never the whole home folder.
- A path is resolved with symbolic links followed; the result must lie inside the allowed
  folder, and no part of it below that folder may be hidden (start with a dot), so
  ``.ssh``, ``.local`` or ``.git`` are never reachable, not even through a link.
- A NUL byte, an over-long name, a link loop: one-line :class:`DataError`, never a traceback.

The CLI runs as the user with the user's permissions and does not use the guard for paths
typed on its command line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from wildid.errors import DataError

ALLOWED_ROOT_ENV = "WILDID_ALLOWED_ROOT"
DEFAULT_DATA_FOLDER = "wildid-data"
# Model, export and session names: a slug that is safe as a file name on every platform.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KINDS = ("any", "file", "folder")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _shown(text: str | os.PathLike) -> str:
    """A path as it may appear in a one-line message: no NUL bytes or newlines, bounded length."""
    shown = _one_line(str(text).replace("\x00", "\\0"))
    return shown if len(shown) <= 200 else shown[:197] + "..."


def default_root() -> Path:
    return Path.home() / DEFAULT_DATA_FOLDER


def allowed_root(create: bool = True) -> Path:
    """The folder the app may read and write: env WILDID_ALLOWED_ROOT, else ~/wildid-data.

    The default folder is created (private to the user) on first use, so a fresh install has
    somewhere to put data without opening the whole home folder.
    """
    text = os.environ.get(ALLOWED_ROOT_ENV, "").strip()
    root = Path(text).expanduser() if text else default_root()
    if create and not text:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root.resolve()


def is_inside(path: Path, root: Path) -> bool:
    """Whether resolved ``path`` is ``root`` or lies below it (both already resolved)."""
    return path == root or root in path.parents


def hidden_part(path: Path, root: Path) -> str | None:
    """The first part of ``path`` below ``root`` whose name starts with a dot, if any."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        return None
    return next((part for part in relative.parts if part.startswith(".")), None)


def check_path(
    path: str | os.PathLike,
    root: Path | None = None,
    *,
    kind: str = "any",
    must_exist: bool = True,
    what: str = "path",
) -> Path:
    """The resolved path when it may be used by the app, else a one-line DataError.

    Relative paths are taken relative to the allowed folder; ``~`` is the home folder.
    ``kind`` "file" / "folder" also checks what the path is (when ``must_exist``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    root = (root or allowed_root()).resolve()
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    shown = _shown(text)
    if not text.strip():
        raise DataError(f"enter a {what} inside {root}")
    if "\x00" in text:
        raise DataError(f"{shown!r}: a {what} cannot contain a NUL byte; type it again")
    try:
        candidate = Path(text.strip()).expanduser()
        if not candidate.is_absolute():
            candidate = root / candidate
        resolved = candidate.resolve()
        exists = resolved.exists()
        is_dir = exists and resolved.is_dir()
    except (ValueError, OSError, RuntimeError) as exc:  # a name too long, a symlink loop
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise DataError(_one_line(f"{shown!r}: not a usable {what} ({reason})")) from None
    if not is_inside(resolved, root):
        raise DataError(_one_line(
            f"{shown}: outside the allowed folder {root} (set {ALLOWED_ROOT_ENV} to change it)"))
    hidden = hidden_part(resolved, root)
    if hidden is not None:
        raise DataError(_one_line(
            f"{shown}: hidden files and folders ({hidden}) are never opened from the app; "
            f"use a folder whose name does not start with a dot"))
    if must_exist and not exists:
        raise DataError(_one_line(f"{shown}: no such {what}"))
    if must_exist and kind == "folder" and not is_dir:
        raise DataError(_one_line(f"{shown}: not a folder"))
    if must_exist and kind == "file" and is_dir:
        raise DataError(_one_line(f"{shown}: is a folder, not a file"))
    return resolved


def check_paths(paths, root: Path | None = None, what: str = "image") -> None:
    """Every path (e.g. the images a labelled CSV lists) inside the allowed folder, or one line
    naming how many are not and the first one."""
    root = (root or allowed_root()).resolve()
    refused, first = 0, None
    for path in paths:
        try:
            check_path(path, root, must_exist=False, what=what)
        except DataError as exc:
            refused += 1
            first = first or str(exc)
    if refused:
        raise DataError(f"{refused} {what} path(s) cannot be used from the app, e.g. {first}")


def check_name(name: str, what: str = "name", allow_spaces: bool = False) -> str:
    """A name that becomes one file or folder name: letters, digits, '-', '_', '.' (and spaces
    when allowed), starting with a letter or digit, at most 64 characters; no separators,
    no '..', never hidden or absolute.  Returns the stripped name."""
    text = str(name).strip()
    pattern = NAME_PATTERN
    if allow_spaces:
        pattern = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,99}$")
    if not pattern.match(text) or ".." in text:
        shown = _shown(text)
        raise DataError(
            f"{what} {shown!r} is not allowed: use letters, digits, '-', '_' or '.'"
            + (" or spaces" if allow_spaces else "")
            + f" (at most {100 if allow_spaces else 64} characters, starting with a letter or digit; "
            "no '/', '..' or leading dot)"
        )
    return text
