"""What the app hands to a batch run besides a server folder: uploaded images and zips, written
into the session's work folder with every member checked first (server folders pass
:func:`wildid.guard.check_path`).

Split from :mod:`wildid.batch`; the names are re-exported there.
"""

from __future__ import annotations

import os
import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from wildid.batch_results import safe_name
from wildid.errors import DataError


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# --- inputs for the app: uploads, zips (server folders pass wildid.guard.check_path) -----------------------------
# 1 GiB: 20x the 50 MB upload limit, room for a zip of uncompressed NIR TIFF frames; JPEG frames
# barely compress, so a zip of camera-trap JPEGs unpacks to about its own size.  The per-session
# quota (wildid.sessions) bounds the disk a session can fill with several zips.
MAX_ZIP_BYTES = int(os.environ.get("WILDID_MAX_ZIP_BYTES", 1024**3))
MAX_ZIP_FILES = 100_000
# Zip bombs: unpacked size over archive size.  Camera frames (JPEG) barely compress, so a zip
# that claims more than this ratio (and more than the floor, so a few blank test images pass)
# is refused before anything is written.  The ratio is taken over the real archive length, so
# overlapping-member bombs (many entries sharing one compressed stream) are caught too.
MAX_ZIP_RATIO = 100
ZIP_RATIO_FLOOR = 64 * 1024**2
# What zipfile raises on a damaged or unsupported member while unpacking.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError,
               zlib.error, ValueError, OSError)


def zip_unpacked_size(source) -> int:
    """Bytes a zip (path or seekable file-like) declares it unpacks to; 0 if it is not a zip.
    Python's zipfile never inflates a member past its declared size, so this bounds the disk use."""
    try:
        position = None if isinstance(source, (str, os.PathLike)) else source.tell()
        with zipfile.ZipFile(source) as archive:
            total = sum(m.file_size for m in archive.infolist() if not m.is_dir())
        if position is not None:
            source.seek(position)
        return total
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return 0


def extract_zip(source, dest: Path | str, max_bytes: int = MAX_ZIP_BYTES, max_files: int = MAX_ZIP_FILES,
                max_ratio: float = MAX_ZIP_RATIO) -> Path:
    """Unpack a zip (path or file-like) into ``dest`` after checking every member: no absolute
    paths or ``..`` (path traversal), no links, and limits on total unpacked size, count and
    compression ratio (zip bombs).  Nothing is written unless all members pass; a member that
    fails while unpacking (bad checksum, size that lies, unsupported compression, encryption,
    a file and a folder of one name) removes everything unpacked so far and raises DataError."""
    dest = Path(dest)
    archive_bytes = _stream_length(source)
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        raise DataError("the upload is not a readable zip file") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > max_files:
            raise DataError(f"the zip holds {len(members)} files, over the limit of {max_files}")
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise DataError(f"the zip unpacks to {total / 1e6:.0f} MB, over the {max_bytes / 1e6:.0f} MB limit")
        if archive_bytes and total > max(ZIP_RATIO_FLOOR, max_ratio * archive_bytes):
            raise DataError(f"the zip unpacks to {total / 1e6:.0f} MB from {archive_bytes / 1e6:.1f} MB, over the "
                            f"{max_ratio:.0f}:1 compression limit (a zip bomb?); refusing the zip")
        for member in members:
            name = PurePosixPath(member.filename.replace("\\", "/"))
            if name.is_absolute() or ".." in name.parts or (name.parts and ":" in name.parts[0]):
                raise DataError(f"the zip entry {member.filename!r} points outside the folder; refusing the zip")
            if (member.external_attr >> 16) & 0o170000 == 0o120000:
                raise DataError(f"the zip entry {member.filename!r} is a symbolic link; refusing the zip")
        existed = dest.is_dir()
        before = set(os.listdir(dest)) if existed else set()
        member = None
        try:
            dest.mkdir(parents=True, exist_ok=True)
            for member in members:
                target = dest / PurePosixPath(member.filename.replace("\\", "/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, target.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        except _ZIP_ERRORS as exc:
            _remove_new_entries(dest, existed, before)
            where = f"the zip entry {member.filename!r}" if member is not None else "the zip"
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise DataError(_one_line(f"{where} could not be unpacked ({reason}); nothing was kept")) from None
    return dest


def _stream_length(source) -> int | None:
    """Byte length of a zip given as a path or a seekable file-like (None if unknown)."""
    try:
        if isinstance(source, (str, os.PathLike)):
            return os.path.getsize(source)
        position = source.tell()
        length = source.seek(0, os.SEEK_END)
        source.seek(position)
        return length
    except (AttributeError, OSError, ValueError):
        return None


def _remove_new_entries(dest: Path, existed: bool, before: set[str]) -> None:
    """Undo a partial extraction: the whole folder if it was made here, else what was added to it."""
    if not existed:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for name in set(os.listdir(dest)) - before:
        path = dest / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def save_uploads(files: Iterable[Any], dest: Path | str) -> Path:
    """Write uploaded files (objects with .name and .getbuffer()/.read()) flat into ``dest``;
    equal names get a numeric suffix instead of overwriting each other."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for upload in files:
        name = safe_name(Path(str(upload.name)).name)
        target, n = dest / name, 1
        while target.exists():
            target = dest / f"{Path(name).stem}_{n}{Path(name).suffix}"
            n += 1
        data = upload.getbuffer() if hasattr(upload, "getbuffer") else upload.read()
        target.write_bytes(bytes(data))
    return dest
