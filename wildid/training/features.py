"""Backbone features of labelled samples: decoding, test-time views, the feature cache."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from wildid.cards import ModelCard
from wildid.datasets import LabelledData, Sample
from wildid.errors import WildidError
from wildid.imaging import crop as crop_image
from wildid.imaging import load_image, to_channel_mode
from wildid.training.progress import Progress, ProgressFn, StopFlag, check_stop
from wildid.views import VIEW_SETS, expand_views

WEIGHT_SOURCES = ("package", "hub", "none")
FEATURE_CACHE_VERSION = 2
# Features are computed for all 8 views of a square once; any view set is then an average of some of them.
EXTRACTED_VIEWS = "d8"


def view_indices(views: str, extracted: str = EXTRACTED_VIEWS) -> list[int]:
    """Positions of ``views`` among the views features were extracted for."""
    have = VIEW_SETS[extracted]
    missing = [v for v in VIEW_SETS[views] if v not in have]
    if missing:
        raise ValueError(f"views {views!r} are not among the extracted {extracted!r}")
    return [have.index(v) for v in VIEW_SETS[views]]


def average_views(per_view: np.ndarray, views: str, extracted: str = EXTRACTED_VIEWS) -> np.ndarray:
    """[N, V_extracted, D] per-view features -> [N, D] averaged over ``views``."""
    return per_view[:, view_indices(views, extracted)].mean(axis=1)


def load_sample(sample: Sample, channel_mode: str, draft_size: int | None) -> Image.Image:
    img = load_image(sample.path, draft_size=None if sample.crop else draft_size)
    if sample.crop:
        img = crop_image(img, sample.crop)
    return to_channel_mode(img, channel_mode)


def sample_key(sample: Sample, channel_mode: str) -> str:
    try:
        stat = sample.path.stat()
        stamp = f"{stat.st_mtime_ns}:{stat.st_size}"
    except OSError:
        stamp = "missing"
    text = f"{sample.path.resolve()}|{stamp}|{sample.crop}|{channel_mode}"
    return hashlib.sha1(text.encode()).hexdigest()


def weights_identity(source: str) -> str:
    if source in WEIGHT_SOURCES:
        return source
    path = Path(source).expanduser()
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_mtime_ns}:{stat.st_size}"


def cache_root() -> Path:
    return Path(os.environ.get("WILDID_CACHE", Path.home() / ".cache" / "wildid")) / "features"


class FeatureCache:
    """Backbone features per image (one row per extracted view), in memory and on disk.

    Keyed by (model: arch + weight source + preprocessing + views) and (file: path + mtime + size +
    crop + channel mode), so a changed image or another backbone never reuses stale features.
    Random weights (``none``) are not cached on disk: they are not a reproducible backbone.
    """

    _memory: dict[str, dict[str, np.ndarray]] = {}
    _lock = threading.Lock()

    def __init__(self, card: ModelCard, weights: str, enabled: bool = True, seed: int = 0,
                 views: str = EXTRACTED_VIEWS):
        cfg = card.data_config()
        # Random weights depend on the seed; pretrained ones do not.
        salt = f"seed{seed}" if weights == "none" else ""
        model_text = (f"v{FEATURE_CACHE_VERSION}|{card.arch}|{weights_identity(weights)}|{salt}|"
                      f"{sorted(cfg.items())}|{views}")
        self.model_key = hashlib.sha1(model_text.encode()).hexdigest()[:16]
        self.enabled = enabled
        self.persistent = enabled and weights != "none"
        self.path = cache_root() / f"{card.arch.replace(':', '_').replace('/', '_')}-{self.model_key}.npz"
        self.dirty = False
        with self._lock:
            if enabled and self.model_key not in self._memory:
                self._memory[self.model_key] = self._read_disk() if self.persistent else {}
            self.entries = self._memory.setdefault(self.model_key, {}) if enabled else {}

    def _read_disk(self) -> dict[str, np.ndarray]:
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as data:
                keys, vectors = data["keys"], data["vectors"]
                return {str(k): vectors[i] for i, k in enumerate(keys)}
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
            return {}

    def get(self, key: str) -> np.ndarray | None:
        return self.entries.get(key) if self.enabled else None

    def put(self, key: str, vector: np.ndarray) -> None:
        if self.enabled:
            self.entries[key] = vector
            self.dirty = True

    def flush(self) -> None:
        if not (self.persistent and self.dirty and self.entries):
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            keys = np.array(list(self.entries))
            vectors = np.stack([self.entries[k] for k in keys]).astype(np.float32)
            tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp.npz")
            np.savez(tmp, keys=keys, vectors=vectors)
            tmp.replace(self.path)
            self.dirty = False
        except OSError:
            pass  # caching is an optimisation; a read-only home must not stop training

    @classmethod
    def clear_memory(cls) -> None:
        with cls._lock:
            cls._memory.clear()


def prefetch(items: Sequence[Any], fn: Callable[[Any], Any], workers: int) -> Iterable[tuple[Any, Any]]:
    """(item, fn(item) or the exception) in order, loading ahead on a few threads."""
    if workers <= 1:
        for item in items:
            try:
                yield item, fn(item)
            except Exception as exc:  # noqa: BLE001
                yield item, exc
        return

    def safe(item):
        try:
            return fn(item)
        except Exception as exc:  # noqa: BLE001
            return exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        window = max(4, workers * 8)
        futures = []
        iterator = iter(items)
        for item in iterator:
            futures.append((item, pool.submit(safe, item)))
            if len(futures) >= window:
                first, fut = futures.pop(0)
                yield first, fut.result()
        for item, fut in futures:
            yield item, fut.result()


@torch.inference_mode()
def pooled_features(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Pre-logit features (what the linear head sees)."""
    if hasattr(model, "forward_head"):
        return model.forward_head(model.forward_features(batch), pre_logits=True)
    head = model.fc
    model.fc = nn.Identity()
    try:
        return model(batch)
    finally:
        model.fc = head


class _PooledFeatures(nn.Module):
    """The backbone up to the pre-logit features, as one module (what gets exported to ONNX)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "forward_head"):
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return _without_fc(self.model, x)


def _without_fc(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    head, model.fc = model.fc, nn.Identity()
    try:
        return model(x)
    finally:
        model.fc = head


# Below this many forward passes the ONNX export (a few seconds) costs more than it saves.
ONNX_MIN_FORWARDS = 512


def feature_runner(model: nn.Module, card: ModelCard, n_forwards: int, backend: str = "auto") -> Callable[[torch.Tensor], np.ndarray]:
    """A function batch -> pooled features: ONNX Runtime for long runs, torch eager otherwise.

    ONNX Runtime ran EfficientNet-Lite 2.5-3x faster than torch eager on the 2-core CPU
    (bench/predict.py); the export is checked against torch on a probe batch and dropped if it
    disagrees or fails, so the result never depends on the back end beyond float rounding.
    """

    def eager(batch: torch.Tensor) -> np.ndarray:
        return pooled_features(model, batch).float().cpu().numpy()

    if backend == "torch" or (backend == "auto" and n_forwards < ONNX_MIN_FORWARDS):
        return eager
    import tempfile
    import warnings

    try:
        import onnxruntime as ort

        wrapper = _PooledFeatures(model).eval()
        probe = torch.randn(2, *card.input_size, generator=torch.Generator().manual_seed(0))
        with tempfile.TemporaryDirectory(prefix="wildid-features-") as tmp:
            path = Path(tmp) / "features.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapper, (probe[:1],), str(path), dynamo=False, input_names=["input"],
                                  output_names=["features"], dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}},
                                  opset_version=17)
            options = ort.SessionOptions()
            options.log_severity_level = 3
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        if not np.allclose(session.run(None, {"input": probe.numpy()})[0], eager(probe), atol=1e-3, rtol=1e-3):
            return eager
    except Exception:  # noqa: BLE001 - any export problem: the eager path is always right
        return eager

    def onnx(batch: torch.Tensor) -> np.ndarray:
        return session.run(None, {"input": batch.numpy().astype(np.float32, copy=False)})[0]

    return onnx


def extract_features(
    model: nn.Module,
    card: ModelCard,
    data: LabelledData,
    cache: FeatureCache,
    batch_size: int = 32,
    workers: int = 2,
    progress: ProgressFn | None = None,
    stop: StopFlag = None,
    views: str = EXTRACTED_VIEWS,
    backend: str = "auto",
) -> tuple[np.ndarray, dict[int, str]]:
    """Features [N, V, D] for every readable sample, one row per view of ``views`` (eval transform),
    and {index: reason} for unreadable files."""
    from wildid.predictor import build_transform, draft_size_for

    transform = build_transform(card)
    draft = draft_size_for(card)
    n_views = len(VIEW_SETS[views])
    keys = [sample_key(s, card.channel_mode) for s in data.samples]
    features: dict[int, np.ndarray] = {}
    bad: dict[int, str] = {}
    todo = []
    for index, key in enumerate(keys):
        cached = cache.get(key)
        if cached is not None and cached.shape[0] == n_views:
            features[index] = cached
        else:
            todo.append(index)
    total = len(keys)
    done = total - len(todo)
    if progress:
        progress(Progress("features", done=done, total=total, message=f"{done} cached"))

    def prepare(index: int) -> torch.Tensor:
        return transform(load_sample(data.samples[index], card.channel_mode, draft))

    model.eval()
    run = feature_runner(model, card, len(todo) * n_views, backend) if todo else None
    batch_idx: list[int] = []
    batch: list[torch.Tensor] = []
    # Fewer images per forward pass when every image brings several views.
    images_per_pass = max(1, batch_size // n_views) if n_views > 1 else batch_size

    def run_batch() -> None:
        nonlocal done
        stacked = torch.stack(batch)
        out = run(expand_views(stacked, views))
        out = out.reshape(n_views, len(batch), -1).transpose(1, 0, 2)  # [B, V, D]
        for i, vectors in zip(batch_idx, out):
            features[i] = np.ascontiguousarray(vectors)
            cache.put(keys[i], features[i])
        done += len(batch)
        batch_idx.clear()
        batch.clear()
        if progress:
            progress(Progress("features", done=done + len(bad), total=total))

    try:
        for index, tensor in prefetch(todo, prepare, workers):
            check_stop(stop, "training stopped while computing features")
            if isinstance(tensor, Exception):
                reason = str(tensor) if isinstance(tensor, WildidError) else f"{type(tensor).__name__}: {tensor}"
                bad[index] = reason
                continue
            batch_idx.append(index)
            batch.append(tensor)
            if len(batch) >= images_per_pass:
                run_batch()
        if batch:
            run_batch()
    finally:
        cache.flush()
    order = [i for i in range(total) if i not in bad]
    if not order:
        return np.zeros((0, n_views, 0), dtype=np.float32), bad
    return np.stack([features[i] for i in order]).astype(np.float32), bad
