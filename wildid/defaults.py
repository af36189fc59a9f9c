"""Defaults the app and the command line share, defined once so both behave the same.

The Batch page's widgets and ``wildid batch`` / ``wildid evaluate`` read these names at run
time (``defaults.RECURSIVE``, not a copy taken at import), so a change here changes both;
tests/test_exit_codes.py checks that both really follow them.

The accept threshold of a batch run is the model card's own ``threshold`` (chosen when the
model was trained or imported), in the app and the CLI alike: see :func:`accept_threshold`.
"""

from __future__ import annotations

# Camera-trap folders are nested (site/camera/date/...): a folder means everything under it.
# The CLI's --no-recursive and the page's "Include sub-folders" box turn it off.
RECURSIVE = True

# empty_score >= this marks a frame as likely empty: hidden from the page's table, no detection in
# the MegaDetector JSON, sorted into _empty/.  On generated backgrounds (tests/test_background.py)
# every blank frame scores >= 0.9 and every frame with an animal below it.
EMPTY_THRESHOLD = 0.9
# The page hides likely-empty frames from its table until the user unticks the box; the CLI
# keeps every row in the CSV (only the JSON and the sorted tree leave them out).
HIDE_LIKELY_EMPTY = True

SEQUENCE_GAP = 60.0  # seconds between frames of one burst / visit
BATCH_SIZE = 16  # images per forward pass
DECODE_WORKERS = 2  # decode threads running ahead of the model
TOP_K = 5  # candidates kept per image in the results

# "Accept everything with confidence >= T" in evaluation reports (Dashboard page, wildid evaluate).
EVALUATE_THRESHOLD = 0.9

FALLBACK_ACCEPT_THRESHOLD = 0.5  # only when no model card is at hand (the page before a model loads)


def accept_threshold(card=None) -> float:
    """Confidence at or above which a batch row is ``accepted`` (else ``review``): the card's."""
    return float(card.threshold) if card is not None else FALLBACK_ACCEPT_THRESHOLD
