"""Galleries of known individuals (append-only folders) and identification against them.

``<galleries root>/<name>/`` holds ``gallery.json`` (model, dimension, threshold),
``embeddings.npy`` (one row per gallery image), ``index.csv`` (individual, image, added_at,
sha1, row, source) and a copy of every gallery image under ``images/``.  Rows are appended,
nothing is overwritten or removed.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from wildid.cards import ModelCard
from wildid.errors import DataError, WildidError
from wildid.imaging import ImageSource, is_image_file, load_image
from wildid.reid.embedding import EmbeddingMixin
from wildid.reid.similarity import calibrate_threshold, individual_scores

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
UNKNOWN = "unknown"
GALLERY_FILE = "gallery.json"
INDEX_FILE = "index.csv"
EMBEDDINGS_FILE = "embeddings.npy"
INDEX_COLUMNS = ("individual", "image", "added_at", "sha1", "row", "source")
DEFAULT_THRESHOLD = 0.5
# A gallery chooses its own threshold once it holds this many individuals with 2+ images.
MIN_CALIBRATION_INDIVIDUALS = 10


def galleries_root() -> Path:
    """``WILDID_GALLERIES``; else ``galleries/`` under the allowed root when the app is confined to one
    (``WILDID_ALLOWED_ROOT``), else ``galleries/`` in the project."""
    if os.environ.get("WILDID_GALLERIES", "").strip():
        return Path(os.environ["WILDID_GALLERIES"]).expanduser()
    if os.environ.get("WILDID_ALLOWED_ROOT", "").strip():
        return Path(os.environ["WILDID_ALLOWED_ROOT"]).expanduser() / "galleries"
    return PROJECT_ROOT / "galleries"


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,99}$")


def check_name(name: str, what: str = "gallery") -> str:
    name = str(name).strip()
    if not _NAME_RE.match(name) or name in (".", "..") or name.lower() == UNKNOWN:
        raise DataError(
            f"{what} name {name!r} is not allowed: use letters, digits, spaces, '-', '_' or '.' "
            f"(up to 100 characters, not starting with a symbol, not 'unknown')"
        )
    return name


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


@dataclass(frozen=True)
class GalleryEntry:
    individual: str
    image: str  # relative to the gallery folder
    added_at: str
    sha1: str
    row: int
    source: str = ""


@dataclass(frozen=True)
class AddReport:
    added: list[GalleryEntry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # duplicates already in the gallery
    failed: list[str] = field(default_factory=list)  # "path: reason"


class Gallery:
    """A folder of known individuals; see the module docstring for the layout."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        meta_path = self.folder / GALLERY_FILE
        if not meta_path.is_file():
            raise DataError(
                f"no gallery in {self.folder}; create one with `wildid gallery add FOLDER --gallery NAME --model MODEL`"
            )
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{meta_path} is not valid JSON ({exc})") from None
        self._entries: list[GalleryEntry] | None = None
        self._embeddings: np.ndarray | None = None

    # --- opening, creating --------------------------------------------------------------------------
    @classmethod
    def open(cls, name_or_path: str | os.PathLike, root: Path | None = None) -> "Gallery":
        path = Path(str(name_or_path)).expanduser()
        if (path / GALLERY_FILE).is_file():
            return cls(path)
        folder = (root or galleries_root()) / str(name_or_path)
        if not (folder / GALLERY_FILE).is_file():
            names = ", ".join(list_galleries(root)) or "none yet"
            raise DataError(
                f"no gallery named {str(name_or_path)!r} (galleries: {names}); create it with "
                f"`wildid gallery add FOLDER --gallery {name_or_path} --model MODEL`"
            )
        return cls(folder)

    @classmethod
    def create(cls, name: str, card: ModelCard, root: Path | None = None, description: str = "") -> "Gallery":
        name = check_name(name)
        folder = (root or galleries_root()) / name
        if (folder / GALLERY_FILE).exists():
            raise DataError(f"gallery {name!r} already exists in {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "name": name,
            "model": card.name,
            "model_version": card.version,
            "model_arch": card.arch,
            "created_at": _now(),
            "description": description,
            "threshold": None,
            "threshold_source": "model card",
        }
        _write_json_atomic(folder / GALLERY_FILE, meta)
        with (folder / INDEX_FILE).open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow(INDEX_COLUMNS)
        return cls(folder)

    @classmethod
    def open_or_create(cls, name: str, card: ModelCard | None, root: Path | None = None) -> "Gallery":
        folder = (root or galleries_root()) / check_name(name)
        if (folder / GALLERY_FILE).is_file():
            return cls(folder)
        if card is None:
            raise DataError(f"gallery {name!r} is new: give the embedding model with --model")
        return cls.create(name, card, root)

    # --- reading ------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.folder.name))

    @property
    def model(self) -> str:
        return str(self.meta["model"])

    @property
    def entries(self) -> list[GalleryEntry]:
        if self._entries is None:
            self._entries = _read_index(self.folder / INDEX_FILE)
        return self._entries

    @property
    def embeddings(self) -> np.ndarray:
        """One row per index entry, in index order."""
        if self._embeddings is None:
            path = self.folder / EMBEDDINGS_FILE
            if not self.entries:
                self._embeddings = np.zeros((0, 0), dtype=np.float32)
            elif not path.is_file():
                raise DataError(f"gallery {self.name!r} lists images but {EMBEDDINGS_FILE} is missing")
            else:
                stored = np.load(path, allow_pickle=False)
                rows = np.array([e.row for e in self.entries])
                if rows.max() >= len(stored):
                    raise DataError(f"gallery {self.name!r}: index.csv refers to embedding rows that are not stored")
                self._embeddings = stored[rows]
        return self._embeddings

    @property
    def labels(self) -> list[str]:
        return [e.individual for e in self.entries]

    def individuals(self) -> dict[str, int]:
        """Individual -> number of gallery images, in order of first appearance."""
        counts: dict[str, int] = {}
        for entry in self.entries:
            counts[entry.individual] = counts.get(entry.individual, 0) + 1
        return counts

    def images_of(self, individual: str) -> list[Path]:
        return [self.folder / e.image for e in self.entries if e.individual == individual]

    def threshold(self, card: ModelCard | None = None) -> float:
        value = self.meta.get("threshold")
        if value is not None:
            return float(value)
        return float(card.threshold) if card is not None else DEFAULT_THRESHOLD

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "individuals": len(self.individuals()),
            "images": len(self.entries),
            "threshold": self.meta.get("threshold"),
            "threshold_source": self.meta.get("threshold_source"),
            "created_at": self.meta.get("created_at"),
            "folder": str(self.folder),
        }

    def check_model(self, card: ModelCard) -> None:
        if card.name != self.model:
            raise DataError(
                f"gallery {self.name!r} was built with model {self.model!r}, not {card.name!r}: "
                f"embeddings of different models cannot be compared (omit --model, or build a new gallery)"
            )

    # --- adding (append only) -----------------------------------------------------------------------
    def add(
        self,
        individual: str,
        images: Iterable[ImageSource],
        embedder: EmbeddingMixin,
        new_individual: bool | None = None,
        source_names: Sequence[str] | None = None,
    ) -> AddReport:
        """Append images of ``individual``; with ``new_individual=True`` the name must be new,
        with ``False`` it must exist (confirming a match).  Identical images already filed under
        the same individual are skipped.  Nothing already stored is changed."""
        individual = check_name(individual, "individual")
        self.check_model(embedder.card)
        report = AddReport()
        with self._lock():
            self._entries = None
            self._embeddings = None
            known = self.individuals()
            if new_individual is True and individual in known:
                raise DataError(f"individual {individual!r} is already in gallery {self.name!r}; pick another name")
            if new_individual is False and individual not in known:
                raise DataError(f"no individual {individual!r} in gallery {self.name!r}")
            seen = {(e.individual, e.sha1) for e in self.entries}
            payloads: list[tuple[bytes, str, Any]] = []
            for k, image in enumerate(images):
                label = source_names[k] if source_names else _source_label(image)
                try:
                    data = _image_bytes(image)
                    picture = load_image(data)
                except WildidError as exc:
                    report.failed.append(f"{label}: {exc}")
                    continue
                digest = _sha1(data)
                if (individual, digest) in seen:
                    report.skipped.append(label)
                    continue
                seen.add((individual, digest))
                payloads.append((data, label, picture))
            if not payloads:
                return report
            vectors = embedder.embed([p[2] for p in payloads])
            stored_path = self.folder / EMBEDDINGS_FILE
            stored = np.load(stored_path, allow_pickle=False) if stored_path.is_file() else None
            if stored is not None and len(stored) and stored.shape[1] != vectors.shape[1]:
                raise DataError(
                    f"gallery {self.name!r} stores {stored.shape[1]}-d embeddings, the model gives {vectors.shape[1]}-d"
                )
            start = 0 if stored is None else len(stored)
            combined = vectors if stored is None else np.concatenate([stored, vectors])
            image_dir = self.folder / "images" / _safe_dirname(individual)
            image_dir.mkdir(parents=True, exist_ok=True)
            stamp = _now()
            new_entries = []
            for offset, (data, label, _) in enumerate(payloads):
                row = start + offset
                target = image_dir / f"{row:06d}-{_safe_filename(label)}"
                _write_new(target, data)
                new_entries.append(
                    GalleryEntry(individual, target.relative_to(self.folder).as_posix(), stamp, _sha1(data), row, label)
                )
            # Embeddings first (atomic replace, old rows unchanged), then the index rows that point
            # at them: a crash in between leaves unreferenced rows, never a dangling reference.
            tmp = stored_path.with_suffix(".npy.tmp")
            with tmp.open("wb") as handle:
                np.save(handle, combined.astype(np.float32))
            tmp.replace(stored_path)
            with (self.folder / INDEX_FILE).open("a", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                for entry in new_entries:
                    writer.writerow([entry.individual, entry.image, entry.added_at, entry.sha1, entry.row, entry.source])
            report.added.extend(new_entries)
            self._entries = None
            self._embeddings = None
        return report

    def recalibrate(self, aggregate: str = "max", min_individuals: int = MIN_CALIBRATION_INDIVIDUALS) -> float | None:
        """Choose the threshold on the gallery itself (leave-one-out open-set simulation).

        Needs ``min_individuals`` individuals with two or more images: in a small gallery the
        left-out individuals rarely have a look-alike, so the threshold would come out too low.
        Until then the model card's threshold (chosen on its validation individuals) applies.
        """
        counts = self.individuals()
        if sum(1 for n in counts.values() if n >= 2) < max(2, min_individuals):
            return None
        threshold = calibrate_threshold(self.embeddings, self.labels, aggregate)
        if threshold is None:
            return None
        meta = dict(self.meta, threshold=round(threshold, 6), threshold_source="gallery (leave-one-out)",
                    threshold_at=_now(), threshold_images=len(self.entries))
        _write_json_atomic(self.folder / GALLERY_FILE, meta)
        self.meta = meta
        return threshold

    def next_individual_name(self, prefix: str = "individual") -> str:
        existing = set(self.individuals())
        n = len(existing) + 1
        while f"{prefix}-{n:03d}" in existing:
            n += 1
        return f"{prefix}-{n:03d}"

    @contextmanager
    def _lock(self):
        import fcntl

        with (self.folder / ".lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def list_galleries(root: Path | None = None) -> list[str]:
    root = root or galleries_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / GALLERY_FILE).is_file())


def individual_folders(folder: Path | str) -> dict[str, list[Path]]:
    """``folder/<individual>/*.jpg`` -> {individual: [images]}; raises DataError when unusable."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder (expected one sub-folder of images per individual)")
    found = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in sub.rglob("*") if p.is_file() and is_image_file(p))
        if images:
            found[sub.name] = images
    if not found:
        raise DataError(f"{folder} has no sub-folders with images (expected one sub-folder per individual)")
    return found


def add_folder(gallery: Gallery, folder: Path | str, embedder: EmbeddingMixin, progress: Callable | None = None) -> AddReport:
    """Add every ``folder/<individual>/`` to the gallery, then recalibrate its threshold."""
    total = AddReport()
    groups = individual_folders(folder)
    for individual, images in groups.items():
        report = gallery.add(individual, images, embedder, source_names=[p.name for p in images])
        total.added.extend(report.added)
        total.skipped.extend(report.skipped)
        total.failed.extend(report.failed)
        if progress:
            progress(len(images))
    gallery.recalibrate()
    return total


# --- identification ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Match:
    individual: str
    similarity: float
    image: Path  # the individual's gallery image most similar to the query


@dataclass(frozen=True)
class Identification:
    label: str  # the individual, or "unknown"
    similarity: float  # score of the best individual
    threshold: float
    matches: tuple[Match, ...]
    gallery: str
    model: str

    @property
    def known(self) -> bool:
        return self.label != UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "known": self.known,
            "similarity": round(self.similarity, 6),
            "threshold": round(self.threshold, 6),
            "matches": [
                {"individual": m.individual, "similarity": round(m.similarity, 6), "image": str(m.image)}
                for m in self.matches
            ],
            "gallery": self.gallery,
            "model": self.model,
        }


def identify(
    embedder: EmbeddingMixin,
    gallery: Gallery,
    images: Sequence[ImageSource] | ImageSource,
    top_k: int = 5,
    threshold: float | None = None,
    aggregate: str = "max",
) -> list[Identification]:
    """Nearest individuals for each image; ``unknown`` when the best is below the threshold."""
    gallery.check_model(embedder.card)
    if not gallery.entries:
        raise DataError(f"gallery {gallery.name!r} is empty; add individuals with `wildid gallery add`")
    threshold = gallery.threshold(embedder.card) if threshold is None else float(threshold)
    queries = embedder.embed(images)
    names, scores, best = individual_scores(queries @ gallery.embeddings.T, gallery.labels, aggregate)
    out = []
    for q in range(len(queries)):
        order = np.argsort(-scores[q], kind="stable")[: max(1, top_k)]
        matches = tuple(
            Match(names[j], float(scores[q, j]), gallery.folder / gallery.entries[best[q, j]].image) for j in order
        )
        top = matches[0]
        label = top.individual if top.similarity >= threshold else UNKNOWN
        out.append(Identification(label, top.similarity, threshold, matches, gallery.name, embedder.card.name))
    return out


# --- small helpers ------------------------------------------------------------------------------------------
def _read_index(path: Path) -> list[GalleryEntry]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    entries = []
    for row in rows:
        try:
            entries.append(GalleryEntry(row["individual"], row["image"], row["added_at"], row.get("sha1", ""),
                                        int(row["row"]), row.get("source", "") or ""))
        except (KeyError, ValueError, TypeError):
            raise DataError(f"{path} has a malformed row: {row}") from None
    return entries


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _write_new(path: Path, data: bytes) -> None:
    """Write a file that must not exist yet (never overwrite a gallery image)."""
    with path.open("xb") as handle:
        handle.write(data)


def _image_bytes(image: ImageSource) -> bytes:
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        return path.read_bytes()
    if isinstance(image, bytes):
        return image
    if hasattr(image, "mode") and hasattr(image, "save"):  # a PIL image: store as PNG (lossless)
        import io

        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return buffer.getvalue()
    if hasattr(image, "getvalue"):
        return image.getvalue()
    if hasattr(image, "read"):
        if hasattr(image, "seek"):
            image.seek(0)
        return image.read()
    raise DataError(f"cannot read an image from a {type(image).__name__}")


def _source_label(image: ImageSource) -> str:
    if isinstance(image, (str, os.PathLike)):
        return Path(image).name
    name = getattr(image, "name", None)
    return Path(str(name)).name if name else "image.png"


def _safe_dirname(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", name).strip("._") or "individual"


def _safe_filename(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.\-]+", "_", Path(name).name).strip("._") or "image"
    if not Path(stem).suffix:
        stem += ".img"
    return stem[-80:]
