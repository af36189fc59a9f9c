"""Open-set evaluation of an embedding: known individuals found, unknown ones rejected."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wildid.errors import DataError
from wildid.reid.embedding import EmbeddingMixin
from wildid.reid.gallery import Gallery, individual_folders
from wildid.reid.similarity import individual_scores


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
