"""Reading checkpoints safely and fitting them to an architecture.

Formats: safetensors; PyTorch state_dicts (``.pt`` / ``.pth``, also wrapped as
``{"state_dict": ...}`` / ``{"model": ...}``, with ``module.`` prefixes from
DataParallel); TorchScript archives.  TorchScript archives and whole pickled modules are
code: TorchScript can read and create files (``torch.from_file(..., shared=True)``) and a
pickle can run anything.  Both are refused unless the caller passes ``trust=True`` (the CLI's
``--trust-checkpoint``; the app never does); everything else is read with
``torch.load(weights_only=True)`` or safetensors, and nothing is run to check it.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from wildid.errors import CheckpointError

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".torchscript", ".jit")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema", "net")
_PREFIXES = ("module.", "_orig_mod.", "model.")

Checkpoint = dict[str, torch.Tensor] | nn.Module


def is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(name.endswith("constants.pkl") or "/code/" in name for name in names)


def read_checkpoint(path: Path | str, trust: bool = False) -> Checkpoint:
    """A state_dict (name -> tensor) or, for TorchScript / trusted pickles, a module."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path.name} is an empty file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path.name} is not a readable safetensors file ({exc})") from None
    if is_torchscript(path):
        if not trust:
            raise CheckpointError(
                f"{path.name} is a TorchScript archive: it holds code, which can read and write files when "
                f"run, so it was refused. Save the weights as a state_dict (model.state_dict()) or safetensors; "
                f"or load it from the command line with --trust-checkpoint if you trust its source"
            )
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError subclasses freely
            raise CheckpointError(f"{path.name} looks like TorchScript but does not load ({type(exc).__name__})") from None
        return module.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Unsupported global" not in str(exc):
            raise CheckpointError(f"{path.name} is not a PyTorch checkpoint ({_first_line(exc)})") from None
        if not trust:
            raise CheckpointError(
                f"{path.name} contains pickled Python objects (a whole saved model, not just weights); "
                f"loading it could run arbitrary code, so it was refused. Re-save it as a state_dict, "
                f"or pass --trust-checkpoint if you trust its source"
            ) from None
        return _load_trusted(path)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path.name} is not a PyTorch checkpoint ({_first_line(exc)})") from None
    if isinstance(obj, nn.Module):
        return obj.eval()
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path.name} holds a {type(obj).__name__}, not a state_dict of tensors")
    return normalise_state_dict(obj)


def _load_trusted(path: Path) -> Checkpoint:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a trusted pickle may fail in any way
        raise CheckpointError(f"{path.name} could not be unpickled ({type(exc).__name__}: {_first_line(exc)})") from None
    if isinstance(obj, nn.Module):
        return obj.eval()
    if isinstance(obj, dict):
        return normalise_state_dict(obj)
    raise CheckpointError(f"{path.name} holds a {type(obj).__name__}, not a model or state_dict")


def normalise_state_dict(obj: dict) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}``-style containers and strip DataParallel / compile prefixes."""
    for key in _WRAPPER_KEYS:
        inner = obj.get(key) if isinstance(obj, dict) else None
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
        if isinstance(inner, nn.Module):
            obj = inner.state_dict()
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError("checkpoint holds no tensors (expected a state_dict: parameter name -> tensor)")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], arch: str, num_classes: int) -> None:
    """Load ``state`` into ``model`` strictly, or raise one message naming what does not fit."""
    from wildid.backbones import head_parameter_names

    own = model.state_dict()
    head = set(head_parameter_names(model))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not missing and not unexpected and not wrong_shape:
        model.load_state_dict(state, strict=True)
        return
    head_only = not missing and not unexpected and set(wrong_shape) <= head
    if head_only:
        weight_key = next((k for k in wrong_shape if k.endswith("weight")), wrong_shape[0])
        found = int(state[weight_key].shape[0])
        raise CheckpointError(
            f"checkpoint has {found} output classes ({weight_key} {tuple(state[weight_key].shape)}) but the "
            f"card lists {num_classes}; give the class list the model was trained with"
        )
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong_shape:
        example = wrong_shape[0]
        parts.append(
            f"{len(wrong_shape)} tensors of another shape (e.g. {example}: checkpoint "
            f"{tuple(state[example].shape)} vs model {tuple(own[example].shape)})"
        )
    hint = guess_arch(state)
    suggestion = f"; it looks like {hint}" if hint and hint != arch else "; is it another architecture?"
    raise CheckpointError(f"checkpoint does not fit arch {arch!r}: {'; '.join(parts)}{suggestion}")


def guess_arch(state: dict[str, torch.Tensor]) -> str | None:
    """Best guess among the supported architectures, from key names and shapes."""
    keys = set(state)
    if "cls_token" in keys and "patch_embed.proj.weight" in keys:
        return "vit_base_patch16_224" if state["cls_token"].shape[-1] == 768 else "a ViT (vit_*)"
    if "conv_stem.weight" in keys:
        return "efficientnet_lite0" if "blocks.6.0.conv_pw.weight" in keys else "an EfficientNet"
    if "layer1.0.conv1.weight" in keys:
        return "resnet50" if "layer1.0.conv3.weight" in keys else "resnet18"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
