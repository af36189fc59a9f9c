"""Test-time views: the same image flipped / rotated, averaged.

Footprints (and other top-down subjects) have no canonical orientation: a print photographed
from the other side is the same print.  A model card's ``views`` names a set of views; the
training features of such a model are averaged over them, and the predictor (torch and ONNX alike)
averages the logits over the same views.  With a linear head the two are the same operation
(the mean of the logits is the logit of the mean feature), so training and prediction agree.

Views act on the preprocessed tensor (after resize, crop and normalisation), so they cost one
extra forward pass each and nothing else.  Rotations need a square input.
"""

from __future__ import annotations

import numpy as np
import torch

# (quarter turns, horizontal flip) per view; the first view is always the image as it is.
VIEW_SETS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flip": ((0, False), (0, True)),
    "rot4": ((0, False), (1, False), (2, False), (3, False)),
    "d8": tuple((k, flip) for k in range(4) for flip in (False, True)),  # the 8 symmetries of a square
}
VIEW_NAMES = tuple(VIEW_SETS)


def view_list(views: str) -> tuple[tuple[int, bool], ...]:
    try:
        return VIEW_SETS[views]
    except KeyError:
        raise ValueError(f"unknown views {views!r}; use one of {', '.join(VIEW_NAMES)}") from None


def needs_square(views: str) -> bool:
    return any(k % 2 for k, _ in view_list(views))


def expand_views(batch: torch.Tensor, views: str) -> torch.Tensor:
    """[B, C, H, W] -> [V * B, C, H, W], view-major (all images in view 0, then view 1, ...)."""
    out = []
    for quarter_turns, flip in view_list(views):
        view = torch.rot90(batch, quarter_turns, dims=(2, 3)) if quarter_turns else batch
        out.append(torch.flip(view, dims=(3,)) if flip else view)
    return out[0] if len(out) == 1 else torch.cat(out)


def mean_over_views(values: np.ndarray | torch.Tensor, views: str):
    """[V * B, ...] (view-major, as :func:`expand_views` makes) -> [B, ...] averaged over views."""
    n = len(view_list(views))
    if n == 1:
        return values
    return values.reshape(n, values.shape[0] // n, *values.shape[1:]).mean(0)
