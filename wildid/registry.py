"""Find model folders, load them by name or path, cache them.

Model folders live in any folder listed in the ``WILDID_MODELS`` environment variable
(``os.pathsep``-separated; searched first), then in the user's models folder
(``models/`` inside the allowed data folder, ``~/wildid-data/models`` by default), then in the
project's bundled ``models/``.  Each holds ``card.toml`` plus weights; timm architectures also
get timm's ``config.json`` so that ``timm.create_model("local-dir:models/NAME", pretrained=True)``
rebuilds them.

The app writes new models only into :func:`app_models_root` (never the bundled folder), under a
checked name, and never replaces a model it did not create in the same session
(:func:`app_model_folder`).  TorchScript and pickled whole models are code: they load only with
``trust=True`` (the CLI's ``--trust-checkpoint``) or, for model folders loaded by name, when the
operator lists the model in ``WILDID_TRUSTED_MODELS``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from wildid.backbones import build_model, card_preprocessing, is_torchvision
from wildid.cards import CARD_FILE, ModelCard, card_from_dict, load_card, today
from wildid.checkpoints import CHECKPOINT_SUFFIXES, fit_state_dict, read_checkpoint
from wildid.errors import CardError, CheckpointError, DataError, ModelNotAvailable, WildidError
from wildid.guard import allowed_root, check_name
from wildid.predictor import BACKENDS, BasePredictor, OnnxPredictor, TorchPredictor, export_onnx
from wildid.staged import staged_folder

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "general-animals"
ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "model.safetensors"
TRUSTED_MODELS_ENV = "WILDID_TRUSTED_MODELS"


def _env_roots() -> list[Path]:
    return [Path(p).expanduser() for p in os.environ.get("WILDID_MODELS", "").split(os.pathsep) if p.strip()]


def bundled_root() -> Path:
    return PROJECT_ROOT / "models"


def user_models_root() -> Path:
    """``models/`` in the allowed data folder: where the app keeps the models people add."""
    return allowed_root(create=False) / "models"


def app_models_root() -> Path:
    """The one folder the app writes models into: the first WILDID_MODELS folder, else the user's."""
    env = _env_roots()
    return env[0] if env else user_models_root()


def model_roots() -> list[Path]:
    roots = _env_roots()
    roots.append(user_models_root())
    roots.append(bundled_root())
    seen, unique = set(), []
    for root in roots:
        key = root.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(root)
    return unique


def default_output_root() -> Path:
    """Where new models (import, train) go by default, from the CLI too: the first WILDID_MODELS
    folder, else the user's models folder (never the bundled one)."""
    return app_models_root()


@dataclass(frozen=True)
class Listing:
    cards: list[ModelCard]
    problems: list[str]  # one line per folder whose card could not be read


def scan_models() -> Listing:
    cards: dict[str, ModelCard] = {}
    problems: list[str] = []
    for root in model_roots():
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if (p / CARD_FILE).is_file()):
            try:
                card = load_card(folder)
            except WildidError as exc:
                problems.append(str(exc))
                continue
            cards.setdefault(card.name, card)  # earlier roots win
    return Listing(sorted(cards.values(), key=_sort_key), problems)


def _sort_key(card: ModelCard) -> tuple:
    return (card.name != DEFAULT_MODEL, not card.has_weights, card.name)


def list_cards() -> list[ModelCard]:
    return scan_models().cards


def find_card(name_or_path: str | os.PathLike) -> ModelCard:
    """The card of a model given by name, by folder, or by a card.toml path."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir() and (path / CARD_FILE).is_file():
        return load_card(path)
    if path.name == CARD_FILE and path.is_file():
        return load_card(path.parent)
    for card in list_cards():
        if card.name == text:
            return card
    names = ", ".join(c.name for c in list_cards()) or "none installed"
    raise ModelNotAvailable(f"no model named {text!r}; installed: {names}")


def _short_path(path: Path | None, fallback: str) -> str:
    """``models/tracks`` rather than an absolute path when the folder lies under the working directory."""
    if path is None:
        return fallback
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def missing_weights_message(card: ModelCard) -> str:
    return (
        f"model {card.name!r} ({card.display_title}) has no weights yet: train one with "
        f"`wildid train DATA --out {_short_path(card.folder, 'models/' + card.name)}`, or add a checkpoint with "
        f"`wildid import CHECKPOINT --name {card.name} --arch ARCH` (classes come from its card)"
    )


def card_for_checkpoint(path: Path, arch: str | None, classes: Sequence[str] | None, name: str | None = None) -> ModelCard:
    """A card for a bare checkpoint file: from an adjacent card.toml, or from arch + classes."""
    adjacent = path.parent / CARD_FILE
    if adjacent.is_file():
        card = load_card(path.parent)
        if card.weights == path.name:
            return card
    if not arch or not classes:
        raise CardError(
            f"{path.name} has no card.toml beside it; give the architecture and class list "
            f"(--arch resnet18 --classes classes.txt) so a card can be written"
        )
    return ModelCard(
        name=name or path.stem,
        arch=arch,
        classes=tuple(classes),
        weights=path.name,
        folder=path.parent,
        **card_preprocessing(arch),
    )


def trusted_model_names() -> set[str]:
    """Model folders the operator declared may hold code (TorchScript, pickled models)."""
    return {n.strip() for n in os.environ.get(TRUSTED_MODELS_ENV, "").split(",") if n.strip()}


def build_network(card: ModelCard, trust: bool = False) -> nn.Module:
    """The card's network with its weights loaded; raises CheckpointError / ModelNotAvailable."""
    if not card.has_weights:
        raise ModelNotAvailable(missing_weights_message(card))
    if card.packaged_weights:  # the installed ImageNet backbone, e.g. the generic re-ID embedding
        from wildid.backbones import lite0_package_state_dict, load_backbone_weights

        model = build_model(card.arch, card.num_classes if card.kind == "classifier" else 0)
        load_backbone_weights(model, lite0_package_state_dict(), card.arch)
        return model.eval()
    checkpoint = read_checkpoint(card.weights_path, trust=trust)
    num_outputs = card.num_classes if card.kind == "classifier" else 0
    if isinstance(checkpoint, nn.Module):
        # Only trusted checkpoints come back as modules, so running one here runs code the
        # user vouched for; untrusted checkpoints are state dicts, checked by shape alone.
        _check_module_outputs(checkpoint, card)
        return checkpoint
    model = build_model(card.arch, num_outputs)
    fit_state_dict(model, checkpoint, card.arch, card.num_classes)
    return model.eval()


def _check_module_outputs(module: nn.Module, card: ModelCard) -> None:
    example = torch.zeros((1, *card.input_size))
    try:
        with torch.inference_mode():
            out = module(example)
    except Exception as exc:  # noqa: BLE001 - a foreign module can fail in any way
        raise CheckpointError(
            f"the saved model does not run on a {list(example.shape)} input ({type(exc).__name__}); check input_size"
        ) from None
    out = out[0] if isinstance(out, (tuple, list)) else out
    if card.kind == "classifier" and out.shape[-1] != card.num_classes:
        raise CheckpointError(
            f"the saved model has {out.shape[-1]} outputs but the card lists {card.num_classes} classes"
        )


def load_predictor(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    backend: str = "torch",
    trust: bool = False,
    arch: str | None = None,
    classes: Sequence[str] | None = None,
    batch_size: int = 16,
) -> BasePredictor:
    """A Predictor for a model name, a model folder, or a checkpoint file (+ arch and classes)."""
    if backend not in BACKENDS:
        raise WildidError(f"unknown back end {backend!r}; use one of {', '.join(BACKENDS)}")
    path = Path(str(name_or_path)).expanduser()
    if path.is_file() and path.name != CARD_FILE:
        card = card_for_checkpoint(path, arch, list(classes) if classes else None)
    else:
        card = find_card(name_or_path)
        trust = trust or card.name in trusted_model_names()
    key = (card.name, str(card.weights_path), backend, trust, batch_size, _fingerprint(card))
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    onnx_class, torch_class = OnnxPredictor, TorchPredictor
    if card.kind == "embedding":  # re-identification models: embed() instead of predict()
        from wildid.reid import EmbeddingPredictor, OnnxEmbeddingPredictor

        onnx_class, torch_class = OnnxEmbeddingPredictor, EmbeddingPredictor
    if backend == "onnx":
        predictor: BasePredictor = onnx_class(card, ensure_onnx(card, trust=trust), batch_size=batch_size)
    else:
        predictor = torch_class(card, build_network(card, trust=trust), batch_size=batch_size)
    with _CACHE_LOCK:
        _CACHE[key] = predictor
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
    return predictor


_CACHE: dict[tuple, BasePredictor] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 6


def _fingerprint(card: ModelCard) -> tuple:
    """Changes when the card or weights change on disk, so a retrained model is reloaded."""
    stamps = []
    for path in (card.folder / CARD_FILE if card.folder else None, card.weights_path, *card.scope_files):
        if path is not None and path.exists():
            stat = path.stat()
            stamps.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(stamps)


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def _cache_dir() -> Path:
    return Path(os.environ.get("WILDID_CACHE", Path.home() / ".cache" / "wildid"))


def onnx_path_for(card: ModelCard) -> Path:
    """``model.onnx`` beside the weights when that folder is writable and not bundled (the project's
    models/ stay as shipped), else in the user cache."""
    bundled = card.folder is not None and bundled_root().resolve() in card.folder.resolve().parents
    if card.folder is not None and not bundled and os.access(card.folder, os.W_OK):
        stem = "model" if card.weights in ("", WEIGHTS_FILE) else Path(card.weights).stem
        return card.folder / f"{stem}.onnx"
    digest = hashlib.sha1(str(card.weights_path).encode()).hexdigest()[:12]
    return _cache_dir() / "onnx" / f"{card.name}-{digest}.onnx"


def ensure_onnx(card: ModelCard, trust: bool = False, force: bool = False) -> Path:
    """Export the model to ONNX unless an up-to-date export exists; returns its path."""
    if not card.has_weights:
        raise ModelNotAvailable(missing_weights_message(card))
    target = onnx_path_for(card)
    # The card counts too: a scope score on features adds a second output to the export.
    sources = [card.weights_path, *card.scope_files]
    if card.kind == "classifier" and card.scope_kind and card.folder is not None:
        sources.append(card.folder / CARD_FILE)
    newest = max(p.stat().st_mtime for p in sources)
    if not force and target.is_file() and target.stat().st_mtime >= newest:
        return target
    return export_onnx(build_network(card, trust=trust), card, target)


def save_model(model: nn.Module, card: ModelCard, folder: Path | str, classes_file: bool | None = None) -> ModelCard:
    """Write ``model`` as safetensors + card.toml (+ timm config.json) into ``folder``.

    The files are written into a staging folder that replaces ``folder`` whole (wildid.staged), so a
    kill at any moment leaves the previous model or the new one, never new weights under an old card.
    Other files of a previous ``folder`` (taxonomy.toml, a README) are kept; its ONNX export is not.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    card = card.replace(weights=WEIGHTS_FILE, folder=folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with staged_folder(folder, carry_over=_kept_on_save) as staging:
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt", "wildid_card": card.name})
        os.chmod(staging / WEIGHTS_FILE, 0o644)  # safetensors writes 0600; models are shared files
        card.save(staging, classes_file=len(card.classes) > 30 if classes_file is None else classes_file)
        if not is_torchvision(card.arch):
            write_timm_config(card, staging, model)
    clear_cache()
    return load_card(folder)


def _kept_on_save(name: str) -> bool:
    """Files of a replaced model folder that stay: not its ONNX export (stale) nor temporary files."""
    return name != ONNX_FILE and not name.endswith(".tmp") and not name.startswith(".")


def write_timm_config(card: ModelCard, folder: Path, model: nn.Module | None = None) -> None:
    """timm's ``config.json`` (as written by ``save_for_hf``) so plain timm can load the folder."""
    config = {
        "architecture": card.arch,
        "num_classes": card.num_classes if card.kind == "classifier" else 0,
        "num_features": int(getattr(model, "num_features", 0) or 0),
        "global_pool": getattr(model, "global_pool", None) and "avg",
        "pretrained_cfg": {
            "input_size": list(card.input_size),
            "interpolation": card.interpolation,
            "mean": list(card.mean),
            "std": list(card.std),
            "crop_pct": card.crop_pct,
            "crop_mode": "center",
            "num_classes": card.num_classes if card.kind == "classifier" else 0,
        },
        "label_names": list(card.classes),
    }
    config = {k: v for k, v in config.items() if v is not None}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def classes_from_text(text: str) -> list[str]:
    """A class list typed in the app: one per line or comma-separated.  Only ever text: a class
    list that happens to name a file on the server is not opened (the CLI's --classes may)."""
    return [part.strip() for part in str(text).replace("\n", ",").split(",") if part.strip()]


def app_model_folder(name: str, replace: bool = False, created_here=None) -> Path:
    """The folder the app may write model ``name`` into, or a one-line DataError.

    The name passes the one name check; the folder is in :func:`app_models_root`.  A model of
    that name anywhere else (a bundled model, another models folder) is never shadowed, and an
    existing model folder is replaced only with ``replace`` and when ``created_here(folder)``
    says this session made it.  A model slot (card without weights) may be filled.
    """
    name = check_name(name, "model name")
    folder = app_models_root() / name
    for card in list_cards():
        if card.name != name or card.folder is None:
            continue
        if card.folder.resolve() != folder.resolve() and card.has_weights:
            raise DataError(
                f"{name!r} is an installed model in {card.folder.parent} (read-only from the app); pick another name"
            )
    if (folder / CARD_FILE).is_file():
        try:
            has_weights = load_card(folder).has_weights
        except WildidError:
            has_weights = True
        if has_weights and not (replace and created_here is not None and created_here(folder)):
            why = ("only models trained in this session can be replaced from the app; "
                   "use `wildid train --overwrite` on the command line" if replace else "pick another name")
            raise DataError(f"model {name!r} already exists in {folder.parent}: {why}")
    elif folder.exists() and any(folder.iterdir()) and not (created_here is not None and created_here(folder)):
        raise DataError(f"{folder} already exists and is not a model folder; pick another name")
    return folder


def import_checkpoint(
    checkpoint: Path | str,
    name: str,
    arch: str | None = None,
    classes: Sequence[str] | None = None,
    root: Path | None = None,
    trust: bool = False,
    source_label: str | None = None,
    **card_fields,
) -> ModelCard:
    """Copy a checkpoint into ``models/<name>/`` with a card; the original is only read.

    Classes may come from an existing model slot of the same name (its card lists them).
    State dicts are converted to safetensors; TorchScript and whole-model pickles need
    ``trust`` and are then copied as they are.  ``name`` passes the one name check (no
    separators, ``..`` or leading dot), so the folder is always directly under ``root``.
    """
    source = Path(checkpoint).expanduser()
    if not source.is_file():
        raise CheckpointError(f"checkpoint {source} not found")
    if source.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(f"{source.name}: expected one of {', '.join(CHECKPOINT_SUFFIXES)}")
    name = check_name(name, "model name")
    root = Path(root) if root else default_output_root()
    folder = root / name
    slot = load_card(folder) if (folder / CARD_FILE).is_file() else None
    if slot is None:  # a slot of that name in another models folder (e.g. a bundled one) lends its classes
        slot = next((c for c in list_cards() if c.name == name and not c.has_weights), None)
    if slot is not None and slot.has_weights:
        raise CheckpointError(f"model {name!r} already has weights in {folder}; pick another --name")
    classes = list(classes) if classes else (list(slot.classes) if slot else None)
    arch = arch or (slot.arch if slot else None)
    if not arch or not classes:
        raise CardError("give --arch and --classes (or import into an existing model slot that lists them)")
    base = slot.to_dict() if slot else {}
    base.update({"name": name, "arch": arch, "classes": list(classes), **card_preprocessing(arch)})
    base.update({k: v for k, v in card_fields.items() if v is not None})
    base.setdefault("provenance", {})
    base["provenance"] = dict(base["provenance"], imported_from=source_label or str(source), imported=today())
    card = card_from_dict(base, folder)
    staged = card.replace(weights=source.name, folder=source.parent)
    model = build_network(staged, trust=trust)  # validates before anything is written
    if isinstance(read_checkpoint(source, trust=trust), nn.Module):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, folder / source.name)
        card.replace(weights=source.name).save(folder)
        clear_cache()
        return load_card(folder)
    return save_model(model, card, folder)
