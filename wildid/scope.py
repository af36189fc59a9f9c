"""Out-of-scope detection: "is this an image this model knows?", beside the confidence.

A classifier always spreads its probability over its own classes, so a footprint sent to an
ImageNet animal model still comes out as "tick 45%".  An *in-scope score* (higher = more like
the model's training images) answers the other question, and a threshold calibrated on
held-out data turns it into a state: below it the image is *out of scope* and no species
answer is given.

Scores (``ModelCard.scope["score"]``):

* ``msp``          maximum softmax probability (the confidence itself; the baseline),
* ``max_logit``    the largest raw logit (Hendrycks et al. 2022),
* ``energy``       ``logsumexp(logits)`` (Liu et al. 2020, negative free energy),
* ``mahalanobis``  minus the smallest Mahalanobis distance of the pooled features to a class
                   mean, with one shared covariance (Lee et al. 2018) estimated by
                   scikit-learn's Ledoit-Wolf shrinkage on the training features,
* ``knn``          minus the cosine distance of the L2-normalised pooled features to their
                   k-th nearest training image (Sun et al. 2022), scikit-learn NearestNeighbors.

The logit scores need nothing but the logits, so every model and back end has them.  The
feature scores need statistics of the training features, stored beside the weights in
``scope.safetensors`` (class means + precision, or the normalised training features).
Which score a model uses is measured (``bench/scope.py``), not assumed.

The threshold is the score that keeps ``IN_SCOPE_RECALL`` of held-out in-scope images
(the usual "95% TPR" operating point); when held-out out-of-scope images are also given
and the score separates them cleanly, the threshold moves up into the gap between the two.

*Exclusions* (``[scope.exclude]``): a kind of image a model is known to take for its own.
The general ImageNet model scores some footprint photos as high as real animals (their mud
and sand look like a beetle or a crab to it), so the energy score alone lets a few through.
A bank of footprint features (kNN, as above) beside the model catches them: an image whose
k-th nearest footprint is closer than the calibrated threshold is out of scope, "looks like
footprints", and the models trained on them (``suggest_task``) are the ones to ask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wildid.errors import WildidError

LOGIT_SCORES = ("msp", "max_logit", "energy")
FEATURE_SCORES = ("mahalanobis", "knn")
SCORES = LOGIT_SCORES + FEATURE_SCORES
SCOPE_FILE = "scope.safetensors"
IN_SCOPE_RECALL = 0.95
KNN_K = 5


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def logit_score(kind: str, logits: np.ndarray) -> np.ndarray:
    """In-scope score per row of ``logits`` [N, C] (higher = more like the training data)."""
    logits = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    if kind == "msp":
        return softmax(logits).max(axis=1)
    if kind == "max_logit":
        return logits.max(axis=1)
    if kind == "energy":
        from scipy.special import logsumexp

        return logsumexp(logits, axis=1)
    raise WildidError(f"unknown logit scope score {kind!r}; use one of {', '.join(LOGIT_SCORES)}")


@dataclass(frozen=True)
class FeatureStats:
    """Statistics of a model's training features that a feature score needs.

    ``mahalanobis``: ``means`` [C, D] and ``precision`` [D, D];
    ``knn``: ``bank`` [N, D] of L2-normalised training features.
    """

    kind: str
    means: np.ndarray | None = None
    precision: np.ndarray | None = None
    bank: np.ndarray | None = None

    @classmethod
    def fit(cls, kind: str, features: np.ndarray, labels: Sequence[int] | None = None) -> "FeatureStats":
        features = np.asarray(features, dtype=np.float64)
        if kind == "knn":
            return cls(kind, bank=_l2(features).astype(np.float32))
        if kind == "mahalanobis":
            from sklearn.covariance import LedoitWolf

            labels = np.zeros(len(features), dtype=int) if labels is None else np.asarray(labels)
            classes = np.unique(labels)
            means = np.stack([features[labels == c].mean(axis=0) for c in classes])
            centred = features - means[np.searchsorted(classes, labels)]
            precision = LedoitWolf().fit(centred).precision_
            return cls(kind, means=means.astype(np.float32), precision=precision.astype(np.float32))
        raise WildidError(f"unknown feature scope score {kind!r}; use one of {', '.join(FEATURE_SCORES)}")

    def score(self, features: np.ndarray) -> np.ndarray:
        features = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if self.kind == "knn":
            from sklearn.neighbors import NearestNeighbors

            bank = self.bank.astype(np.float64)
            k = min(KNN_K, len(bank))
            distances, _ = NearestNeighbors(n_neighbors=k).fit(bank).kneighbors(_l2(features))
            # Euclidean distance between unit vectors: sqrt(2 - 2 cos); report cosine distance.
            return -(distances[:, -1] ** 2) / 2.0
        means = self.means.astype(np.float64)
        precision = self.precision.astype(np.float64)
        diffs = features[:, None, :] - means[None, :, :]
        distances = np.einsum("ncd,de,nce->nc", diffs, precision, diffs)
        return -distances.min(axis=1)

    def save(self, path: Path | str) -> Path:
        from safetensors.numpy import save_file

        path = Path(path)
        arrays = {k: np.ascontiguousarray(v) for k, v in
                  (("means", self.means), ("precision", self.precision), ("bank", self.bank)) if v is not None}
        tmp = path.with_suffix(path.suffix + ".tmp")
        save_file(arrays, str(tmp), metadata={"kind": self.kind})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path | str) -> "FeatureStats":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise WildidError(f"scope statistics {path.name} are missing beside the model weights")
        with safe_open(str(path), framework="numpy") as handle:
            kind = (handle.metadata() or {}).get("kind", "")
            arrays = {key: handle.get_tensor(key) for key in handle.keys()}
        if kind not in FEATURE_SCORES:
            raise WildidError(f"{path.name}: unknown scope statistics kind {kind!r}")
        return cls(kind, **arrays)


def load_stats(card) -> FeatureStats | None:
    """The card's feature statistics, or None for logit scores / cards without a scope."""
    if card.scope_kind not in FEATURE_SCORES:
        return None
    path = card.scope_path
    if path is None:
        raise WildidError(f"model card {card.name!r}: the {card.scope_kind} scope score needs a statistics file")
    return FeatureStats.load(path)


def load_exclusion(card) -> FeatureStats | None:
    """The feature bank of the card's ``[scope.exclude]`` (a kind of image it mistakes for its own), or None."""
    path = card.scope_exclusion_path
    if path is None:
        return None
    stats = FeatureStats.load(path)
    if stats.kind != "knn":
        raise WildidError(f"{path.name}: an exclusion needs knn statistics, found {stats.kind}")
    return stats


def excluded(card, stats: FeatureStats | None, features: np.ndarray | None) -> np.ndarray | None:
    """Per row: does the image look like the card's excluded kind (its kNN score at or above the threshold)?"""
    exclusion = card.scope_exclusion
    if exclusion is None or stats is None:
        return None
    if features is None:
        raise WildidError(f"model {card.name!r}: its scope exclusion needs pooled features, which this back end "
                          f"did not return")
    return stats.score(features) >= float(exclusion["threshold"])


def calibrate_exclusion(predictor, name: str, fit_images: Sequence = (), calib_excluded: Sequence = (),
                        calib_kept: Sequence = (), suggest_task: str = "", measured_by: str = "",
                        fit_features: np.ndarray | None = None) -> Any:
    """Give ``predictor``'s model an exclusion (``name``: what the images are, e.g. "footprints").

    ``fit_images`` (or their pooled ``fit_features``) form the kNN bank; the threshold comes
    from held-out images of the excluded kind (``calib_excluded``, kept at ``IN_SCOPE_RECALL``)
    and, when given, held-out images the model does know (``calib_kept``): when the two are
    cleanly apart the threshold sits in the middle of the gap (``calibrate_threshold``).
    Writes the bank beside the weights and the entry into the card; returns the updated card.
    """
    card = predictor.card
    if card.folder is None or card.scope_kind is None:
        raise WildidError(f"model {card.name!r} needs a folder and a scope calibration before an exclusion")
    if fit_features is None:
        _, fit_features = logits_and_features(predictor, list(fit_images))
    if fit_features is None or not len(fit_features):
        raise WildidError("an exclusion needs images of the excluded kind and a torch model with pooled features")
    stats = FeatureStats.fit("knn", fit_features)
    values = {}
    for key, images in (("excluded", calib_excluded), ("kept", calib_kept)):
        features = logits_and_features(predictor, list(images))[1] if len(images) else np.zeros((0, 1))
        values[key] = stats.score(features) if len(images) else np.zeros(0)
    threshold = calibrate_threshold(values["excluded"], values["kept"])
    file = f"exclude-{name}.safetensors"
    stats.save(card.folder / file)
    entry: dict[str, Any] = {
        "name": name, "file": file, "threshold": round(float(threshold), 6), "suggest_task": suggest_task,
        "calibration": f"{len(fit_features)} {name} in the bank; {len(values['excluded'])} held-out {name} "
                       f"(kept at {IN_SCOPE_RECALL:.0%}), {len(values['kept'])} held-out images in scope",
    }
    if measured_by:
        entry["measured_by"] = measured_by
    updated = card.replace(scope={**card.scope, "exclude": entry})
    updated.save(card.folder, classes_file=(card.folder / "classes.txt").is_file())
    return updated


def _l2(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def scores(kind: str, logits: np.ndarray, features: np.ndarray | None = None,
           stats: FeatureStats | None = None) -> np.ndarray:
    """The ``kind`` score for a batch; feature scores need ``features`` and fitted ``stats``."""
    if kind in LOGIT_SCORES:
        return logit_score(kind, logits)
    if kind in FEATURE_SCORES:
        if features is None or stats is None:
            raise WildidError(f"the {kind} scope score needs pooled features and the model's {SCOPE_FILE}")
        return stats.score(features)
    raise WildidError(f"unknown scope score {kind!r}; use one of {', '.join(SCORES)}")


def logits_and_features(predictor, images: Sequence) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw logits and pooled features of ``images`` through ``predictor``'s own preprocessing."""
    import torch

    from wildid.predictor import pooled_features_and_logits

    model = getattr(predictor, "model", None)
    logits, features = [], []
    for start in range(0, len(images), predictor.batch_size):
        batch = torch.stack([predictor.preprocess(image) for image in images[start:start + predictor.batch_size]])
        if model is None:  # ONNX: logits only
            logits.append(predictor.logits(batch))
            continue
        with torch.inference_mode():
            out, pooled = pooled_features_and_logits(model, batch.to(predictor.device))
        logits.append(out.float().cpu().numpy())
        if pooled is not None:
            features.append(pooled.float().cpu().numpy())
    return np.concatenate(logits), (np.concatenate(features) if features else None)


def calibrate_model(predictor, kind: str, calib_in: Sequence, calib_out: Sequence = (),
                    fit_images: Sequence = (), fit_labels: Sequence[int] | None = None,
                    measured_by: str = "", fit_features: np.ndarray | None = None) -> Any:
    """Give ``predictor``'s model a scope check and write it into its card (and statistics file).

    ``fit_images`` (+ ``fit_labels`` for mahalanobis): training images for the feature
    statistics (or their pooled ``fit_features``, already computed); ``calib_in`` / ``calib_out``: held-out in-scope / out-of-scope images for the
    threshold.  Returns the updated card.
    """
    card = predictor.card
    if card.folder is None:
        raise WildidError(f"model {card.name!r} has no folder to write its scope into")
    stats = None
    if kind in FEATURE_SCORES:
        if fit_features is None and len(fit_images):
            _, fit_features = logits_and_features(predictor, list(fit_images))
        if fit_features is None or not len(fit_features):
            raise WildidError(f"the {kind} scope score needs training images and a torch model with pooled features")
        stats = FeatureStats.fit(kind, fit_features, fit_labels)
    values = {}
    for name, images in (("in", calib_in), ("out", calib_out)):
        if len(images):
            logits, features = logits_and_features(predictor, list(images))
            values[name] = scores(kind, logits, features, stats)
        else:
            values[name] = np.zeros(0)
    threshold = calibrate_threshold(values["in"], values["out"])
    entry: dict[str, Any] = {"score": kind, "threshold": round(float(threshold), 6),
                             "in_scope_recall": IN_SCOPE_RECALL,
                             "calibration": f"{len(values['in'])} in-scope, {len(values['out'])} out-of-scope held-out images"}
    if len(values["out"]):
        entry["calibration_auroc"] = round(auroc(values["in"], values["out"]), 4)
    if measured_by:
        entry["measured_by"] = measured_by
    if stats is not None:
        stats.save(card.folder / SCOPE_FILE)
        entry["file"] = SCOPE_FILE
    if card.scope_exclusion is not None:  # a recalibrated score keeps the model's exclusion
        entry["exclude"] = card.scope_exclusion
    updated = card.replace(scope=entry)
    updated.save(card.folder, classes_file=(card.folder / "classes.txt").is_file())
    return updated


def calibrate_from_data(predictor, data, kind: str = "knn", out_of_scope: Sequence = (),
                        held_out: float = 0.2, seed: int = 0) -> Any:
    """Scope check from a labelled data set (ImageFolder or CSV, as for training).

    A stratified ``held_out`` share of the images is kept back for the threshold; the rest fit
    the feature statistics.  ``out_of_scope``: optional images the model should reject.
    """
    from sklearn.model_selection import train_test_split

    from wildid.datasets import load_labelled

    labelled = load_labelled(data)
    samples = [s for s in labelled.samples if s.label in predictor.card.classes]
    if len(samples) < 10:
        raise WildidError(f"{data}: {len(samples)} images of the model's classes; calibrating a scope needs 10 or more")
    labels = [predictor.card.classes.index(s.label) for s in samples]
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    fit, calib = train_test_split(list(range(len(samples))), test_size=held_out, random_state=seed, stratify=stratify)
    return calibrate_model(
        predictor, kind, [samples[i].path for i in calib], list(out_of_scope), [samples[i].path for i in fit],
        [labels[i] for i in fit],
        measured_by=f"wildid calibrate-scope: {len(fit)} images of {data} fitted, {len(calib)} held out",
    )


def better_fits(image, predictors) -> list:
    """Predictions of other models that call ``image`` in scope, most confident first.

    Only models with a scope calibration can vouch for an image; the others are skipped.
    """
    found = []
    for predictor in predictors:
        if predictor.card.kind != "classifier" or predictor.card.scope_kind is None:
            continue
        [prediction] = predictor.predict([image], top_k=3)
        if not prediction.out_of_scope:
            found.append(prediction)
    return sorted(found, key=lambda p: -p.confidence)


def auroc(in_scope: Sequence[float], out_of_scope: Sequence[float]) -> float:
    """AUROC with in-scope as the positive class (1.0 = every in-scope image scores higher)."""
    from sklearn.metrics import roc_auc_score

    in_scope, out_of_scope = np.asarray(in_scope, float), np.asarray(out_of_scope, float)
    y = np.concatenate([np.ones(len(in_scope)), np.zeros(len(out_of_scope))])
    return float(roc_auc_score(y, np.concatenate([in_scope, out_of_scope])))


def calibrate_threshold(in_scope: Sequence[float], out_of_scope: Sequence[float] = (),
                        recall: float = IN_SCOPE_RECALL) -> float:
    """The score threshold from held-out data (never the test set).

    Start at the score that keeps ``recall`` of the in-scope images.  With out-of-scope
    images too: if that threshold still lets some of them through, keep it (in-scope recall
    is the promise); if the two groups are cleanly apart, use the middle of the gap, which
    leaves margin on both sides.
    """
    in_scope = np.sort(np.asarray(in_scope, dtype=np.float64))
    if not len(in_scope):
        raise WildidError("calibrating a scope threshold needs held-out in-scope images")
    threshold = float(np.quantile(in_scope, 1.0 - recall, method="lower"))
    out_of_scope = np.asarray(out_of_scope, dtype=np.float64)
    if len(out_of_scope) and out_of_scope.max() < threshold:
        threshold = float((out_of_scope.max() + in_scope[in_scope >= threshold].min()) / 2.0)
    return threshold


def summary(in_scope: Sequence[float], out_of_scope: Sequence[float], threshold: float) -> dict[str, Any]:
    """Rates at ``threshold``: share of in-scope kept, share of out-of-scope rejected."""
    in_scope, out_of_scope = np.asarray(in_scope, float), np.asarray(out_of_scope, float)
    return {
        "auroc": round(auroc(in_scope, out_of_scope), 4),
        "in_scope_kept": round(float((in_scope >= threshold).mean()), 4),
        "out_of_scope_rejected": round(float((out_of_scope < threshold).mean()), 4),
        "n_in": int(len(in_scope)),
        "n_out": int(len(out_of_scope)),
    }
