"""One predictor interface over torch-eager and ONNX Runtime back ends.

The flow is ``preprocess -> forward -> postprocess``, the same for one image or many:

    predictor = load_predictor("general-animals")
    [prediction] = predictor.predict(["cat.jpg"], top_k=5)
    prediction.label, prediction.confidence, prediction.top_k

Batching, device and back end are the predictor's business, not the caller's.
Preprocessing is driven entirely by the model card (timm's data config); so are the test-time
views averaged (``card.views``) and the temperature that calibrates the confidence
(``card.temperature``), applied in :meth:`BasePredictor.predict_proba` for every back end.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np
import timm  # noqa: F401 - imported eagerly: concurrent lazy imports from app sessions race
import timm.data
import torch
from PIL import Image
from torch import nn

from wildid.cards import ModelCard
from wildid.imaging import ImageSource, load_image, to_channel_mode
from wildid.views import expand_views, mean_over_views

BACKENDS = ("torch", "onnx")


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    top_k: tuple[tuple[str, float], ...]
    model: str
    card: ModelCard = field(repr=False, compare=False)

    @property
    def uncertain(self) -> bool:
        """Below the card's threshold: show candidates, never a confident answer."""
        return self.confidence < self.card.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "uncertain": self.uncertain,
            "top_k": [{"label": label, "score": round(score, 6)} for label, score in self.top_k],
            "model": self.model,
            "model_version": self.card.version,
        }


@runtime_checkable
class Predictor(Protocol):
    card: ModelCard
    backend: str

    def predict(self, images: Sequence[ImageSource], top_k: int = 5) -> list[Prediction]: ...

    def preprocess(self, image: ImageSource) -> torch.Tensor: ...

    def predict_proba(self, batch: torch.Tensor) -> np.ndarray: ...


def build_transform(card: ModelCard) -> Callable[[Image.Image], torch.Tensor]:
    """timm's eval transform for the card's data config (resize, centre crop, normalise)."""
    cfg = card.data_config()
    return timm.data.create_transform(
        input_size=cfg["input_size"],
        interpolation=cfg["interpolation"],
        mean=cfg["mean"],
        std=cfg["std"],
        crop_pct=cfg["crop_pct"],
        crop_mode=cfg["crop_mode"],
        is_training=False,
    )


def draft_size_for(card: ModelCard) -> int:
    """Smallest side a JPEG may be draft-decoded to without losing model resolution."""
    return int(np.ceil(max(card.input_size[1:]) / card.crop_pct))


def trim_extreme_aspect(img: Image.Image, max_ratio: float = 4.0) -> Image.Image:
    """Centre-crop the long side of a very elongated image to twice the short side.

    The eval transform resizes the short side up to the model size and keeps only a
    centred square, so this changes nothing the model sees; without it a 50000x10 strip
    would be resized to millions of pixels first.
    """
    width, height = img.size
    short, long = min(width, height), max(width, height)
    if long <= max_ratio * short:
        return img
    keep = 2 * short
    if width > height:
        left = (width - keep) // 2
        return img.crop((left, 0, left + keep, height))
    top = (height - keep) // 2
    return img.crop((0, top, width, top + keep))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (temperature scaling; 1 = plain softmax)."""
    logits = logits.astype(np.float64) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float64)


class BasePredictor:
    backend = "base"

    def __init__(self, card: ModelCard, batch_size: int = 16):
        self.card = card
        self.batch_size = batch_size
        self.transform = build_transform(card)
        self.draft_size = draft_size_for(card)

    # --- preprocess ------------------------------------------------------------------
    def load(self, source: ImageSource) -> Image.Image:
        return load_image(source, draft_size=self.draft_size)

    def preprocess(self, image: ImageSource) -> torch.Tensor:
        img = image if isinstance(image, Image.Image) else self.load(image)
        img = to_channel_mode(img if img.mode == "RGB" else img.convert("RGB"), self.card.channel_mode)
        return self.transform(trim_extreme_aspect(img))

    # --- forward -------------------------------------------------------------------------
    def logits(self, batch: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def view_logits(self, batch: torch.Tensor) -> np.ndarray:
        """Logits averaged over the card's test-time views (one pass when views = none)."""
        return mean_over_views(self.logits(expand_views(batch, self.card.views)), self.card.views)

    def predict_proba(self, batch: torch.Tensor) -> np.ndarray:
        """Calibrated probabilities: softmax of the view-averaged logits over the card's temperature.

        Both back ends share this, so torch and ONNX give the same calibrated confidences.
        """
        return softmax(self.view_logits(batch), self.card.temperature)

    # --- postprocess ---------------------------------------------------------------------
    def postprocess(self, probs: np.ndarray, top_k: int = 5) -> list[Prediction]:
        k = max(1, min(top_k, probs.shape[1]))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        out = []
        for row, idx in zip(probs, order):
            ranked = tuple((self.card.classes[i], float(row[i])) for i in idx)
            out.append(Prediction(ranked[0][0], ranked[0][1], ranked, self.card.name, self.card))
        return out

    def predict(self, images: Sequence[ImageSource] | ImageSource, top_k: int = 5) -> list[Prediction]:
        if isinstance(images, (str, os.PathLike, bytes, Image.Image)):
            images = [images]
        results: list[Prediction] = []
        for chunk in _chunks(list(images), self.batch_size):
            batch = torch.stack([self.preprocess(image) for image in chunk])
            results.extend(self.postprocess(self.predict_proba(batch), top_k))
        return results


class TorchPredictor(BasePredictor):
    backend = "torch"

    def __init__(self, card: ModelCard, model: nn.Module, batch_size: int = 16, device: str | None = None):
        super().__init__(card, batch_size)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()

    def logits(self, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            out = self.model(batch.to(self.device, dtype=torch.float32))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float().cpu().numpy()


class OnnxPredictor(BasePredictor):
    backend = "onnx"

    def __init__(self, card: ModelCard, onnx_path: Path, batch_size: int = 16, threads: int | None = None):
        super().__init__(card, batch_size)
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.onnx_path = Path(onnx_path)
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, batch: torch.Tensor) -> np.ndarray:
        array = batch.numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        return self.session.run(None, {self.input_name: array.astype(np.float32, copy=False)})[0]


def export_onnx(model: nn.Module, card: ModelCard, path: Path | str, opset: int = 17) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis; returns the path.

    Uses the TorchScript-based exporter, which needs no extra packages and handles the
    supported ResNet / EfficientNet / ViT graphs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    example = torch.zeros((1, *card.input_size), dtype=torch.float32)
    tmp = path.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
        )
    tmp.replace(path)
    return path


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
