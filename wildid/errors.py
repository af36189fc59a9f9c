"""Errors a user can cause. Each carries a one-line message that says what to do.

Programming errors still raise ordinary exceptions; these are for bad files, wrong
checkpoints, missing models and the like, and the app and CLI print ``str(err)`` as is.
"""

from __future__ import annotations


class WildidError(Exception):
    """Base class: the message is shown to the user verbatim, on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ImageError(WildidError):
    """An input file is not a usable image (corrupt, truncated, empty, too large...)."""


class CheckpointError(WildidError):
    """A checkpoint cannot be loaded, or does not fit the architecture / class list."""


class CardError(WildidError):
    """A model card (card.toml) is missing, malformed or inconsistent."""


class ModelNotAvailable(WildidError):
    """A model slot exists but has no weights yet, or a model name is unknown."""


class DataError(WildidError):
    """A data set (folder, CSV, results file) cannot be used as given."""


class ClusterError(WildidError):
    """A Dask cluster cannot be reached or used (no scheduler, a worker that cannot see the images)."""
