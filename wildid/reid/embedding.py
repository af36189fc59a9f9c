"""Embedding predictors: a card with ``kind = "embedding"`` gives ``embed(images) -> [N, D]``
(pooled backbone features, L2-normalised) instead of ``predict``; same preprocessing, batching
and back ends as the classifiers."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from wildid.cards import ModelCard
from wildid.errors import ModelNotAvailable, WildidError
from wildid.imaging import ImageSource
from wildid.predictor import OnnxPredictor, TorchPredictor, _chunks


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
