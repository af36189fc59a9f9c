"""Re-identification of individual animals (e.g. lynx by coat pattern) in an open set.

Three parts:

* **Embedding predictors.**  A model card with ``kind = "embedding"`` (``task = "reid"``)
  names any timm backbone built with ``num_classes=0``; its pooled features, L2-normalised,
  are the embedding.  ``registry.load_predictor`` returns an :class:`EmbeddingPredictor`
  for such cards (same preprocessing, batching and back ends as the classifiers), whose
  ``embed(images) -> np.ndarray [N, D]`` replaces ``predict``.
* **Galleries.**  ``<galleries root>/<name>/`` holds ``gallery.json`` (model, dimension,
  threshold), ``embeddings.npy`` (one row per gallery image), ``index.csv`` (individual,
  image, added_at, sha1, row) and a copy of every gallery image under ``images/``.
  Galleries only grow: rows are appended, nothing is overwritten or removed.
* **Identification** ranks individuals by cosine similarity (per individual: the max, or the
  mean of the top few image similarities) and answers ``unknown`` below a threshold chosen on
  validation data as the one maximising Youden's J (balanced accuracy) between known-match
  and unknown similarities.

Training (:func:`train_embedding`) learns the embedding with a batch-hard triplet loss on
P x K batches (P individuals, K images each).  Triplet rather than ArcFace because re-ID
data sets have many individuals with few photos each and are open-set by nature: the
triplet loss needs no per-individual weight matrix (whose rows ArcFace must learn from
those few photos, and which is thrown away at test time anyway), and batch-hard mining
(Hermans et al., 2017, "In Defense of the Triplet Loss") is the standard strong re-ID
baseline.  Individuals, not images, are split between training and validation, so the
validation figures (and the threshold chosen on them) are open-set.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from wildid.cards import ModelCard
from wildid.errors import DataError, ModelNotAvailable, WildidError
from wildid.imaging import ImageSource, is_image_file, load_image
from wildid.predictor import OnnxPredictor, TorchPredictor, _chunks

PROJECT_ROOT = Path(__file__).resolve().parent.parent
UNKNOWN = "unknown"
AGGREGATES = ("max", "mean")
GALLERY_FILE = "gallery.json"
INDEX_FILE = "index.csv"
EMBEDDINGS_FILE = "embeddings.npy"
INDEX_COLUMNS = ("individual", "image", "added_at", "sha1", "row", "source")
DEFAULT_THRESHOLD = 0.5
# A gallery chooses its own threshold once it holds this many individuals with 2+ images.
MIN_CALIBRATION_INDIVIDUALS = 10


# --- embedding predictors ------------------------------------------------------------------------
def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class EmbeddingMixin:
    """``embed`` instead of ``predict`` for models whose card says ``kind = "embedding"``."""

    card: ModelCard
    batch_size: int

    def embed(self, images: Sequence[ImageSource] | ImageSource) -> np.ndarray:
        """L2-normalised embeddings, one row per image, float32."""
        if isinstance(images, (str, os.PathLike, bytes)) or hasattr(images, "mode"):
            images = [images]
        rows = []
        for chunk in _chunks(list(images), self.batch_size):
            batch = torch.stack([self.preprocess(image) for image in chunk])  # type: ignore[attr-defined]
            out = self.logits(batch)  # type: ignore[attr-defined]
            rows.append(l2_normalise(out.reshape(len(chunk), -1)))
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(rows)

    def predict(self, images, top_k: int = 5):
        raise WildidError(
            f"model {self.card.name!r} is a re-identification (embedding) model, not a classifier: "
            f"use `wildid identify IMAGE --gallery NAME` or the Re-ID page"
        )

    def predict_proba(self, batch):
        return self.predict(batch)


class EmbeddingPredictor(EmbeddingMixin, TorchPredictor):
    """Torch back end; ``.model`` is the headless backbone."""


class OnnxEmbeddingPredictor(EmbeddingMixin, OnnxPredictor):
    """ONNX Runtime back end (the export of the headless backbone)."""


def embedding_card(name: str, arch: str, input_size: int | None = None, **fields: Any) -> ModelCard:
    """A card for an embedding model of ``arch`` with timm's preprocessing for it."""
    from wildid.backbones import default_data_config

    cfg = default_data_config(arch)
    size = tuple(cfg["input_size"]) if input_size is None else (3, int(input_size), int(input_size))
    fields.setdefault("title", f"Re-ID embedding ({arch})")
    return ModelCard(
        name=name,
        arch=arch,
        classes=(),
        task="reid",
        kind="embedding",
        input_size=size,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg["interpolation"],
        crop_pct=1.0 if input_size is not None else float(cfg["crop_pct"]),
        **fields,
    )


def embedding_cards() -> list[ModelCard]:
    from wildid.registry import list_cards

    return [card for card in list_cards() if card.kind == "embedding"]


def load_embedder(name_or_path: str | os.PathLike, backend: str = "torch") -> EmbeddingMixin:
    from wildid.registry import load_predictor

    predictor = load_predictor(name_or_path, backend=backend)
    if not isinstance(predictor, EmbeddingMixin):
        names = ", ".join(c.name for c in embedding_cards()) or "none installed (train one with `wildid train-reid`)"
        raise ModelNotAvailable(
            f"model {predictor.card.name!r} is a classifier, not a re-identification model; embedding models: {names}"
        )
    return predictor


# --- similarity, ranking, thresholds -------------------------------------------------------------
def individual_scores(
    similarities: np.ndarray, labels: Sequence[str], aggregate: str = "max", top_n: int = 3
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per individual: a score from image similarities ``[Q, G]`` -> (names, scores [Q, I], best image [Q, I]).

    ``max``: the best image; ``mean``: the mean of the individual's ``top_n`` best images
    (steadier when an individual has many photos, some of the wrong flank).
    """
    if aggregate not in AGGREGATES:
        raise WildidError(f"unknown aggregate {aggregate!r}; use max or mean")
    similarities = np.atleast_2d(similarities)
    labels = np.asarray(labels)
    names = sorted(set(labels.tolist()))
    scores = np.full((similarities.shape[0], len(names)), -np.inf, dtype=np.float32)
    best = np.zeros((similarities.shape[0], len(names)), dtype=np.int64)
    for j, name in enumerate(names):
        cols = np.flatnonzero(labels == name)
        sims = similarities[:, cols]
        best[:, j] = cols[np.argmax(sims, axis=1)]
        if aggregate == "max" or sims.shape[1] == 1:
            scores[:, j] = sims.max(axis=1)
        else:
            n = min(top_n, sims.shape[1])
            scores[:, j] = np.sort(sims, axis=1)[:, -n:].mean(axis=1)
    return names, scores, best


def choose_threshold(known: Sequence[float], unknown: Sequence[float]) -> float:
    """The similarity threshold maximising Youden's J = TPR - FPR (= 2 x balanced accuracy - 1).

    ``known``: best-match scores of queries whose individual is in the gallery;
    ``unknown``: best-match scores of queries whose individual is not.  The threshold is the
    middle of the interval of thresholds where J peaks (midpoints between neighbouring scores).
    """
    known = np.asarray(known, dtype=np.float64)
    unknown = np.asarray(unknown, dtype=np.float64)
    if not len(known) or not len(unknown):
        raise DataError("choosing a threshold needs both known-match and unknown scores")
    values = np.unique(np.concatenate([known, unknown]))
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    tpr = (known[None, :] >= candidates[:, None]).mean(axis=1)
    fpr = (unknown[None, :] >= candidates[:, None]).mean(axis=1)
    j = tpr - fpr
    best = np.flatnonzero(np.isclose(j, j.max()))
    # Where J is flat (e.g. a clean gap between the two groups), take the middle of that interval.
    return float(np.clip((candidates[best.min()] + candidates[best.max()]) / 2, 0.0, 1.0))


def open_set_scores(
    embeddings: np.ndarray, labels: Sequence[str], aggregate: str = "max", top_n: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leave-one-out open-set simulation on one labelled set of embeddings.

    For each image whose individual has another image: the *known* score is its score for its
    own individual with itself left out; the *unknown* score is its best score among the other
    individuals (as if its individual had never been seen).  Also returns whether the top
    individual was the right one (leave-one-out top-1).
    """
    labels = np.asarray(labels)
    sims = embeddings @ embeddings.T
    np.fill_diagonal(sims, -np.inf)
    names, scores, _ = individual_scores(sims, labels, aggregate, top_n)
    name_index = {name: j for j, name in enumerate(names)}
    known, unknown, correct = [], [], []
    for i, label in enumerate(labels):
        own = name_index[label]
        if (labels == label).sum() < 2 or len(names) < 2:
            continue
        row = scores[i].copy()
        known.append(row[own])
        row_other = np.delete(row, own)
        unknown.append(row_other.max())
        correct.append(int(np.argmax(row)) == own)
    return np.asarray(known), np.asarray(unknown), np.asarray(correct, dtype=bool)


def calibrate_threshold(embeddings: np.ndarray, labels: Sequence[str], aggregate: str = "max") -> float | None:
    """Threshold from a labelled set (validation individuals, or a gallery itself); None if too small."""
    known, unknown, _ = open_set_scores(embeddings, labels, aggregate)
    if len(known) < 2 or len(unknown) < 2:
        return None
    return choose_threshold(known, unknown)


def pair_auroc(embeddings: np.ndarray, labels: Sequence[str]) -> float:
    """AUROC of same-individual vs different-individual pair similarities: the separation measure."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    sims = embeddings @ embeddings.T
    upper = np.triu_indices(len(labels), k=1)
    same = (labels[:, None] == labels[None, :])[upper]
    if same.all() or not same.any():
        return float("nan")
    return float(roc_auc_score(same, sims[upper]))


# --- galleries ----------------------------------------------------------------------------------------
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
        # The index (header) first, gallery.json last: gallery.json is what makes the folder a
        # gallery, so a kill in between leaves a folder that the next create simply finishes.
        with (folder / INDEX_FILE).open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow(INDEX_COLUMNS)
            _sync(handle)
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
                if target.exists():  # left by an add killed before its embeddings were stored: no index
                    target.unlink()  # row refers to it (rows >= the stored count are never referenced)
                _write_new(target, data)
                new_entries.append(
                    GalleryEntry(individual, target.relative_to(self.folder).as_posix(), stamp, _sha1(data), row, label)
                )
            # Embeddings first (atomic replace, old rows unchanged), then the index rows that point
            # at them: a crash in between leaves unreferenced rows, never a dangling reference.
            tmp = stored_path.with_suffix(".npy.tmp")
            with tmp.open("wb") as handle:
                np.save(handle, combined.astype(np.float32))
                _sync(handle)
            tmp.replace(stored_path)
            index_path = self.folder / INDEX_FILE
            _drop_torn_last_line(index_path)  # a kill mid-append: the next rows start on a line of their own
            lines = io.StringIO(newline="")
            if not index_path.is_file() or index_path.stat().st_size == 0:
                csv.writer(lines).writerow(INDEX_COLUMNS)
            csv.writer(lines).writerows(
                [entry.individual, entry.image, entry.added_at, entry.sha1, entry.row, entry.source]
                for entry in new_entries
            )
            with index_path.open("a", newline="", encoding="utf-8") as handle:
                handle.write(lines.getvalue())  # one write: a kill leaves at most one torn last line
                _sync(handle)
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


# --- evaluation ----------------------------------------------------------------------------------------
def open_set_split(
    groups: dict[str, list[Any]], known_fraction: float = 0.5, gallery_fraction: float = 0.5, seed: int = 0
) -> tuple[dict[str, list], dict[str, list], dict[str, list]]:
    """Split individuals into known (gallery part + query part) and unknown (queries only)."""
    names = sorted(groups)
    rng = np.random.default_rng(seed)
    rng.shuffle(names)
    n_known = min(len(names) - 1, max(1, round(len(names) * known_fraction)))
    gallery, known_queries, unknown_queries = {}, {}, {}
    for name in names[:n_known]:
        items = list(groups[name])
        if len(items) < 2:
            gallery[name] = items
            continue
        n_gallery = min(len(items) - 1, max(1, round(len(items) * gallery_fraction)))
        gallery[name] = items[:n_gallery]
        known_queries[name] = items[n_gallery:]
    for name in names[n_known:]:
        unknown_queries[name] = list(groups[name])
    return gallery, known_queries, unknown_queries


def score_queries(
    gallery_emb: np.ndarray, gallery_labels: Sequence[str], known_emb: np.ndarray, known_labels: Sequence[str],
    unknown_emb: np.ndarray, threshold: float | None, aggregate: str = "max",
) -> dict[str, Any]:
    """Top-1 / top-5 on known queries, rejection AUROC (known = positive) and rates at the threshold."""
    from sklearn.metrics import roc_auc_score

    names, known_scores, _ = individual_scores(known_emb @ gallery_emb.T, gallery_labels, aggregate)
    _, unknown_scores, _ = individual_scores(unknown_emb @ gallery_emb.T, gallery_labels, aggregate)
    order = np.argsort(-known_scores, axis=1, kind="stable")
    truth = np.array([names.index(label) for label in known_labels])
    rank_hit = order == truth[:, None]
    top1 = float(rank_hit[:, :1].any(axis=1).mean())
    top5 = float(rank_hit[:, :5].any(axis=1).mean())
    known_best = known_scores.max(axis=1)
    unknown_best = unknown_scores.max(axis=1)
    y = np.concatenate([np.ones(len(known_best)), np.zeros(len(unknown_best))])
    auroc = float(roc_auc_score(y, np.concatenate([known_best, unknown_best])))
    result: dict[str, Any] = {
        "top1": round(top1, 4),
        "top5": round(top5, 4),
        "open_set_auroc": round(auroc, 4),
        "known_queries": int(len(known_best)),
        "unknown_queries": int(len(unknown_best)),
        "gallery_individuals": len(names),
        "gallery_images": int(len(gallery_labels)),
    }
    if threshold is not None:
        accepted = known_best >= threshold
        result.update(
            threshold=round(float(threshold), 4),
            unknown_rejected=round(float((unknown_best < threshold).mean()), 4),
            known_accepted=round(float(accepted.mean()), 4),
            known_accepted_correct=round(float((accepted & rank_hit[:, 0]).mean()), 4),
        )
    return result


def evaluate_reid(
    embedder: EmbeddingMixin,
    data: Path | str,
    gallery: Gallery | None = None,
    known_fraction: float = 0.5,
    gallery_fraction: float = 0.5,
    threshold: float | None = None,
    aggregate: str = "max",
    seed: int = 0,
) -> dict[str, Any]:
    """Open-set evaluation on an individual-labelled folder.

    With ``gallery``: individuals of ``data`` that the gallery knows are known queries, the
    others unknown.  Without: ``data``'s individuals are split into known (part of their images
    form the gallery, the rest are queries) and unknown (all images are queries).
    """
    groups = individual_folders(data)
    if gallery is not None:
        gallery.check_model(embedder.card)
        if not gallery.entries:
            raise DataError(f"gallery {gallery.name!r} is empty")
        known_names = set(gallery.individuals())
        known = {k: v for k, v in groups.items() if k in known_names}
        unknown = {k: v for k, v in groups.items() if k not in known_names}
        gallery_emb, gallery_labels = gallery.embeddings, gallery.labels
        threshold = gallery.threshold(embedder.card) if threshold is None else threshold
    else:
        split_gallery, known, unknown = open_set_split(groups, known_fraction, gallery_fraction, seed)
        gallery_labels = [name for name, items in split_gallery.items() for _ in items]
        gallery_emb = embedder.embed([p for items in split_gallery.values() for p in items])
        threshold = embedder.card.threshold if threshold is None else threshold
    if not known or not unknown:
        raise DataError(
            "open-set evaluation needs individuals the gallery knows and individuals it does not "
            f"(known: {len(known)}, unknown: {len(unknown)})"
        )
    known_labels = [name for name, items in known.items() for _ in items]
    known_emb = embedder.embed([p for items in known.values() for p in items])
    unknown_emb = embedder.embed([p for items in unknown.values() for p in items])
    result = score_queries(gallery_emb, gallery_labels, known_emb, known_labels, unknown_emb, threshold, aggregate)
    result.update(model=embedder.card.name, data=str(data), aggregate=aggregate,
                  gallery=gallery.name if gallery is not None else "split from data")
    return result


# --- training ---------------------------------------------------------------------------------------------
def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss on L2-normalised embeddings (distance = 1 - cosine similarity).

    For each anchor: its farthest positive and nearest negative in the batch.
    """
    sims = embeddings @ embeddings.T
    dist = (1 - sims).clamp_min(0)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos_mask = same & ~eye
    neg_mask = ~same
    valid = pos_mask.any(dim=1) & neg_mask.any(dim=1)
    if not valid.any():
        return embeddings.sum() * 0
    hardest_pos = torch.where(pos_mask, dist, torch.full_like(dist, -1.0)).max(dim=1).values
    hardest_neg = torch.where(neg_mask, dist, torch.full_like(dist, 4.0)).min(dim=1).values
    return torch.relu(hardest_pos - hardest_neg + margin)[valid].mean()


def split_individuals(groups: dict[str, list], val_fraction: float, seed: int) -> tuple[dict, dict]:
    usable = {k: v for k, v in groups.items() if len(v) >= 2}
    if len(usable) < 4:
        raise DataError(
            f"training a re-ID embedding needs at least 4 individuals with 2+ images each (found {len(usable)})"
        )
    names = sorted(usable)
    rng = np.random.default_rng(seed)
    rng.shuffle(names)
    n_val = min(len(names) - 2, max(2, round(len(names) * val_fraction)))
    val = {k: usable[k] for k in names[:n_val]}
    train = {k: usable[k] for k in names[n_val:]}
    return train, val


def train_transform(card: ModelCard, max_rotation: float = 25.0):
    from torchvision import transforms

    from wildid.imaging import to_channel_mode

    size = card.input_size[1:]
    return transforms.Compose([
        transforms.Lambda(lambda img: to_channel_mode(img, card.channel_mode)),
        transforms.RandomRotation(max_rotation, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.RandomResizedCrop(size, scale=(0.55, 1.0), ratio=(0.8, 1.25), antialias=True),
        # No horizontal flip: a mirrored flank is another coat pattern.
        transforms.ColorJitter(brightness=0.35, contrast=0.25, saturation=0.15),
        transforms.ToTensor(),
        transforms.Normalize(card.mean, card.std),
    ])


@dataclass
class TrainResult:
    card: ModelCard
    history: list[dict[str, float]]


def train_embedding(
    data: Path | str,
    out: Path | str,
    arch: str = "resnet18",
    epochs: int = 10,
    weights: str = "none",
    input_size: int | None = None,
    batch_individuals: int = 8,
    per_individual: int = 4,
    lr: float | None = None,
    margin: float = 0.3,
    val_fraction: float = 0.3,
    steps_per_epoch: int | None = None,
    seed: int = 0,
    name: str | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Learn an embedding from ``data/<individual>/*.jpg`` with a batch-hard triplet loss.

    Individuals are split into training and validation (open set); the best epoch by
    validation pair AUROC is kept; the card's threshold is chosen on the validation
    individuals (leave-one-out, Youden's J) and the card records the validation metrics.
    """
    from wildid.backbones import pretrained_backbone
    from wildid.predictor import build_transform
    from wildid.registry import save_model

    torch.manual_seed(seed)
    out = Path(out)
    groups = individual_folders(data)
    train_groups, val_groups = split_individuals(groups, val_fraction, seed)
    card = embedding_card(name or out.name, arch, input_size)
    model = pretrained_backbone(arch, 0, weights)
    augment = train_transform(card)
    evaluate_transform = build_transform(card)
    cache: dict[Path, Any] = {}

    def picture(path: Path):
        if path not in cache:
            cache[path] = load_image(path, draft_size=max(card.input_size[1:]) * 2).convert("RGB")
        return cache[path]

    def embed_val(net) -> tuple[np.ndarray, list[str]]:
        from wildid.imaging import to_channel_mode

        net.eval()
        labels = [k for k, items in val_groups.items() for _ in items]
        paths = [p for items in val_groups.values() for p in items]
        rows = []
        with torch.inference_mode():
            for chunk in _chunks(paths, 32):
                batch = torch.stack([evaluate_transform(to_channel_mode(picture(p), card.channel_mode)) for p in chunk])
                rows.append(l2_normalise(net(batch).numpy()))
        return np.concatenate(rows), labels

    def val_metrics(net) -> dict[str, float]:
        emb, labels = embed_val(net)
        known, unknown, correct = open_set_scores(emb, labels)
        from sklearn.metrics import roc_auc_score

        y = np.concatenate([np.ones(len(known)), np.zeros(len(unknown))])
        return {
            "val_pair_auroc": pair_auroc(emb, labels),
            "val_top1": float(correct.mean()) if len(correct) else float("nan"),
            "val_open_set_auroc": float(roc_auc_score(y, np.concatenate([known, unknown]))),
        }

    train_names = sorted(train_groups)
    n_images = sum(len(v) for v in train_groups.values())
    p = min(batch_individuals, len(train_names))
    k = per_individual
    steps = steps_per_epoch or max(1, math.ceil(n_images / (p * k)))
    lr = lr or (3e-4 if weights != "none" else 1e-3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps))
    rng = np.random.default_rng(seed)
    history = [{"epoch": 0, "loss": float("nan"), **val_metrics(model)}]
    if progress:
        progress(history[-1])
    best_state = {key: v.detach().clone() for key, v in model.state_dict().items()}
    best_score = history[0]["val_pair_auroc"]
    started = time.time()
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        for _ in range(steps):
            chosen = rng.choice(len(train_names), size=p, replace=False)
            batch, labels = [], []
            for index in chosen:
                items = train_groups[train_names[index]]
                picks = rng.choice(len(items), size=k, replace=len(items) < k)
                for pick in picks:
                    batch.append(augment(picture(items[pick])))
                    labels.append(int(index))
            embeddings = torch.nn.functional.normalize(model(torch.stack(batch)), dim=1)
            loss = batch_hard_triplet_loss(embeddings, torch.tensor(labels), margin)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        row = {"epoch": epoch, "loss": float(np.mean(losses)), **val_metrics(model),
               "elapsed_s": round(time.time() - started, 1)}
        history.append(row)
        if progress:
            progress(row)
        if row["val_pair_auroc"] >= best_score:
            best_score = row["val_pair_auroc"]
            best_state = {key: v.detach().clone() for key, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    emb, labels = embed_val(model)
    threshold = calibrate_threshold(emb, labels)
    best = max(history, key=lambda r: r["val_pair_auroc"])
    metrics = {
        "val_pair_auroc": round(best["val_pair_auroc"], 4),
        "val_pair_auroc_untrained": round(history[0]["val_pair_auroc"], 4),
        "val_top1": round(best["val_top1"], 4),
        "val_open_set_auroc": round(best["val_open_set_auroc"], 4),
        "best_epoch": int(best["epoch"]),
        "measured_by": (
            f"leave-one-out on {len(val_groups)} validation individuals never seen in training "
            f"({sum(len(v) for v in val_groups.values())} images)"
        ),
    }
    card = card.replace(
        threshold=DEFAULT_THRESHOLD if threshold is None else round(threshold, 4),
        description="Embedding for re-identification of individuals; cosine similarity, L2-normalised.",
        provenance={
            "data": str(data),
            "date": _dt.date.today().isoformat(),
            "loss": f"batch-hard triplet, margin {margin}, P={p} x K={k}",
            "weights": str(weights),
            "epochs": epochs,
            "train_individuals": len(train_groups),
            "val_individuals": sorted(val_groups),
            "command": f"wildid train-reid {data} --out {out} --arch {arch} --epochs {epochs}",
        },
        metrics=metrics,
    )
    saved = save_model(model, card, out)
    return TrainResult(saved, history)


# --- small helpers ------------------------------------------------------------------------------------------
def _read_index(path: Path) -> list[GalleryEntry]:
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    if text and not text.endswith("\n"):  # a torn last line (killed mid-append): not a row yet
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
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
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2) + "\n")
        _sync(handle)
    tmp.replace(path)


def _sync(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _drop_torn_last_line(path: Path) -> None:
    """Cut a half-written last line (no newline at the end) off an append-only CSV."""
    if not path.is_file():
        return
    with path.open("rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


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
