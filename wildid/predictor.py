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
import threading
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

from wildid import scope
from wildid.cards import ModelCard
from wildid.imaging import Box, ImageSource, crop_fraction, load_image, to_channel_mode
from wildid.taxonomy import RollUp
from wildid.views import expand_views, mean_over_views

BACKENDS = ("torch", "onnx")


@dataclass(frozen=True)
class Prediction:
    """Top class and top-k, plus the answer at the rank the evidence supports.

    ``rank`` / ``taxon`` / ``taxon_confidence``: for a top class at or above the card's
    threshold, the class's own taxon (e.g. species ``Felis catus`` for "tabby"; empty when
    the model has no taxonomy for it); below the threshold, the lowest taxon whose summed
    probability reaches it (``closest`` = its most probable classes), or empty when none does.
    """

    label: str
    confidence: float
    top_k: tuple[tuple[str, float], ...]
    model: str
    card: ModelCard = field(repr=False, compare=False)
    # "Is this an image the model knows?" (wildid.scope; higher = more like its training images),
    # None when the card has no scope calibration.
    scope_score: float | None = None
    rank: str = ""
    taxon: str = ""
    taxon_confidence: float = 0.0
    closest: tuple[str, ...] = ()
    # The card's excluded kind of image this one looks like (e.g. "footprints"), or "".
    excluded_as: str = ""

    @property
    def out_of_scope(self) -> bool:
        """Below the card's scope threshold, or like a kind of image the card excludes: not
        something this model was trained on."""
        if self.excluded_as:
            return True
        threshold = self.card.scope_threshold
        return self.scope_score is not None and threshold is not None and self.scope_score < threshold

    @property
    def species_confident(self) -> bool:
        """The top class itself reaches the card's threshold (and the image is in scope)."""
        return not self.out_of_scope and self.confidence >= self.card.threshold

    @property
    def rolled_up(self) -> bool:
        """No class is sure enough, but a higher taxon (genus ... class) is: answer with that."""
        return not self.out_of_scope and not self.species_confident and bool(self.taxon)

    @property
    def uncertain(self) -> bool:
        """No answer at any rank (or out of scope): show candidates, never a confident answer."""
        return self.out_of_scope or (not self.species_confident and not self.taxon)

    @property
    def state(self) -> str:
        """``out_of_scope`` | ``uncertain`` | ``rolled_up`` | ``confident``, in that order of precedence."""
        if self.out_of_scope:
            return "out_of_scope"
        if self.uncertain:
            return "uncertain"
        return "rolled_up" if self.rolled_up else "confident"

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "uncertain": self.uncertain,
            "state": self.state,
            "scope_score": None if self.scope_score is None else round(self.scope_score, 6),
            "excluded_as": self.excluded_as,
            "top_k": [{"label": label, "score": round(score, 6)} for label, score in self.top_k],
            "model": self.model,
            "model_version": self.card.version,
            "rank": self.rank,
            "taxon": self.taxon,
            "taxon_confidence": round(self.taxon_confidence, 6),
            "rolled_up": self.rolled_up,
            "closest": list(self.closest),
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


def pooled_features_and_logits(model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, pooled features) in one pass; features are None for networks of unknown shape.

    timm models: ``forward_head(pre_logits=True)`` is what the classifier sees; torchvision
    ResNets: the flattened average pool before ``fc``.  Both equal ``model(batch)`` for the logits.
    """
    if hasattr(model, "forward_features") and hasattr(model, "forward_head") and hasattr(model, "get_classifier"):
        features = model.forward_head(model.forward_features(batch), pre_logits=True)
        return model.get_classifier()(features), features
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear) and hasattr(model, "avgpool") and hasattr(model, "layer4"):
        trunk = nn.Sequential(*[m for name, m in model.named_children() if name != "fc"])
        features = torch.flatten(trunk(batch), 1)
        return fc(features), features
    out = model(batch)
    return (out[0] if isinstance(out, (tuple, list)) else out), None


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
        self.scope_stats = scope.load_stats(card)
        self.exclusion_stats = scope.load_exclusion(card)
        self.rollup = RollUp.for_card(card)

    # --- preprocess ------------------------------------------------------------------
    def load(self, source: ImageSource, box: Box | None = None) -> Image.Image:
        """The one decode path for the app, the CLI and batch: the model's JPEG draft size,
        EXIF orientation, and an optional ``box`` (fractions of the upright photo).

        A box is cut from a decode large enough that the cut still covers the model's size.
        """
        if box is None:
            return load_image(source, draft_size=self.draft_size)
        left, top, right, bottom = box
        side = min(right - left, bottom - top)
        draft = int(np.ceil(self.draft_size / max(side, 1e-3)))
        return crop_fraction(load_image(source, draft_size=draft), box)

    def preprocess(self, image: ImageSource) -> torch.Tensor:
        img = image if isinstance(image, Image.Image) else self.load(image)
        img = to_channel_mode(img if img.mode == "RGB" else img.convert("RGB"), self.card.channel_mode)
        return self.transform(trim_extreme_aspect(img))

    # --- forward -------------------------------------------------------------------------
    def logits(self, batch: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def raw_forward(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """One pass: (logits, pooled features); features only when the card's scope score needs them."""
        return self.logits(batch), None

    def forward(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, pooled features), each averaged over the card's test-time views."""
        views = self.card.views
        logits, features = self.raw_forward(expand_views(batch, views))
        return mean_over_views(logits, views), None if features is None else mean_over_views(features, views)

    def view_logits(self, batch: torch.Tensor) -> np.ndarray:
        """Logits averaged over the card's test-time views (one pass when views = none)."""
        return mean_over_views(self.logits(expand_views(batch, self.card.views)), self.card.views)

    def predict_proba(self, batch: torch.Tensor) -> np.ndarray:
        """Calibrated probabilities: softmax of the view-averaged logits over the card's temperature.

        Both back ends share this, so torch and ONNX give the same calibrated confidences.
        """
        return self.probabilities(self.view_logits(batch))

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities from (view-averaged) logits: the card's temperature scaling."""
        return softmax(logits, self.card.temperature)

    # --- postprocess ---------------------------------------------------------------------
    def scope_scores(self, logits: np.ndarray, features: np.ndarray | None = None) -> np.ndarray | None:
        """The card's in-scope score per row, or None when the card has no scope calibration."""
        kind = self.card.scope_kind
        if kind is None:
            return None
        return scope.scores(kind, logits, features, self.scope_stats)

    def scope_exclusions(self, features: np.ndarray | None) -> np.ndarray | None:
        """Per row: the image looks like the card's excluded kind (None when the card has no exclusion)."""
        return scope.excluded(self.card, self.exclusion_stats, features)

    def postprocess(self, probs: np.ndarray, top_k: int = 5, scope_scores: np.ndarray | None = None,
                    exclusions: np.ndarray | None = None) -> list[Prediction]:
        k = max(1, min(top_k, probs.shape[1]))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        # Every back end, page and command passes through here: the one place that rolls up.
        answers = self.rollup.answers(probs, self.card.threshold)
        out = []
        scope_threshold = self.card.scope_threshold
        for n, (row, idx, answer) in enumerate(zip(probs, order, answers)):
            ranked = tuple((self.card.classes[i], float(row[i])) for i in idx)
            score = None if scope_scores is None else float(scope_scores[n])
            excluded_as = self.card.scope_exclusion["name"] if exclusions is not None and exclusions[n] else ""
            if excluded_as or (score is not None and scope_threshold is not None and score < scope_threshold):
                answer = type(answer)()  # out of scope: no answer at any rank
            out.append(Prediction(ranked[0][0], ranked[0][1], ranked, self.card.name, self.card, scope_score=score,
                                  rank=answer.rank, taxon=answer.taxon, taxon_confidence=answer.confidence,
                                  closest=answer.closest, excluded_as=excluded_as))
        return out

    def predict_batch(self, batch: torch.Tensor, top_k: int = 5) -> list[Prediction]:
        """Predictions for preprocessed tensors: one forward, probabilities and scope scores."""
        logits, features = self.forward(batch)
        return self.postprocess(self.probabilities(logits), top_k, self.scope_scores(logits, features),
                                self.scope_exclusions(features))

    def predict(self, images: Sequence[ImageSource] | ImageSource, top_k: int = 5) -> list[Prediction]:
        if isinstance(images, (str, os.PathLike, bytes, Image.Image)):
            images = [images]
        results: list[Prediction] = []
        for chunk in _chunks(list(images), self.batch_size):
            batch = torch.stack([self.preprocess(image) for image in chunk])
            results.extend(self.predict_batch(batch, top_k))
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

    def raw_forward(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        if not self.card.needs_features:
            return self.logits(batch), None
        with torch.inference_mode():
            logits, features = pooled_features_and_logits(self.model, batch.to(self.device, dtype=torch.float32))
        return logits.float().cpu().numpy(), None if features is None else features.float().cpu().numpy()


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
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _run(self, batch: torch.Tensor) -> list[np.ndarray]:
        array = batch.numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        return self.session.run(None, {self.input_name: array.astype(np.float32, copy=False)})

    def logits(self, batch: torch.Tensor) -> np.ndarray:
        return self._run(batch)[0]

    def raw_forward(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self._run(batch)
        features = outputs[1] if len(outputs) > 1 and self.card.needs_features else None
        return outputs[0], features


def export_onnx(model: nn.Module, card: ModelCard, path: Path | str, opset: int = 17) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis; returns the path.

    Uses the TorchScript-based exporter, which needs no extra packages and handles the
    supported ResNet / EfficientNet / ViT graphs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    example = torch.zeros((1, *card.input_size), dtype=torch.float32)
    outputs = ["logits"]
    if card.needs_features:
        with torch.inference_mode():
            if pooled_features_and_logits(model, example)[1] is not None:
                model, outputs = _LogitsAndFeatures(model), ["logits", "features"]
    # A name of this process's own: two processes exporting the same model (app workers, a Dask
    # worker beside its client) must not rename each other's half-written file.
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            dynamo=False,
            input_names=["input"],
            output_names=outputs,
            dynamic_axes={"input": {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
            opset_version=opset,
        )
    tmp.replace(path)
    return path


class _LogitsAndFeatures(nn.Module):
    """Exports logits and pooled features as two ONNX outputs (feature scope scores need both)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: torch.Tensor):
        return pooled_features_and_logits(self.model, batch)


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
