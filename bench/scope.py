"""Out-of-scope detection: which score tells "an image this model knows" from the rest?

    .venv/bin/python bench/scope.py                  # measure, print the tables
    .venv/bin/python bench/scope.py --write-cards    # also store the chosen score + threshold in the cards

Two models, real images where we have them:

* **general-animals** (ImageNet animal classes).  In scope: real animal photos; offline we
  have exactly one (scikit-image's Chelsea the cat), so it is shown with 12 views of it
  (crops, flips, scales, JPEG quality), which are *not* independent samples.  Out of scope:
  the 500 real footprint photos of shared/data/tracks-families, 60 generated NIR camera-trap
  frames (tests/imagegen.py) and scikit-image's non-animal photos (objects, textures).
* **tracks-families** (5 footprint families).  In scope: the footprint photos (valid split
  for calibration, test split for the figures).  Out of scope: the same NIR frames and
  scikit-image photos, Chelsea included.  Before models/tracks-families is installed the
  bench trains a stand-in (logistic regression on the packaged EfficientNet-Lite0 features
  of the train split).

Every score is compared on the same images in the same run.  Thresholds are calibrated on
held-out calibration images (wildid.scope.calibrate_threshold) and the figures at the
threshold are on the other images.  The general model's footprint figure counts photos that
would still be shown as a confident answer (in scope and above the card's confidence threshold).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.imagegen import nir_frame  # noqa: E402
from wildid import scope  # noqa: E402
from wildid.cards import ModelCard  # noqa: E402
from wildid.imaging import load_image  # noqa: E402
from wildid.predictor import build_transform, draft_size_for, pooled_features_and_logits  # noqa: E402
from wildid.registry import find_card  # noqa: E402

TRACKS = Path("/work/shared/data/tracks-families")
# scikit-image's bundled sample files (no download): the one animal photo, and the rest.
SKIMAGE_ANIMALS = ("chelsea.png",)
SKIMAGE_OTHERS = ("astronaut.png", "coffee.png", "rocket.jpg", "camera.png", "coins.png", "moon.png", "text.png",
                  "page.png", "brick.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "motorcycle_left.png",
                  "retina.jpg", "ihc.png", "cell.png", "logo.png", "color.png", "clock_motion.png",
                  "microaneurysms.png")


@dataclass
class Item:
    name: str
    group: str  # footprint-train | footprint-valid | footprint-test | nir | object | animal
    image: Image.Image | Path


def skimage_photo(name: str) -> Image.Image:
    import skimage

    return load_image(Path(skimage.__file__).parent / "data" / name)


def views(img: Image.Image, n: int = 12) -> list[Image.Image]:
    """Crops, flips, rescales and re-encodings of one photo (not independent samples)."""
    out = []
    w, h = img.size
    for k in range(n):
        v = img
        if k % 2:
            v = ImageOps.mirror(v)
        frac = (1.0, 0.85, 0.7, 0.6)[k % 4]
        cw, ch = int(w * frac), int(h * frac)
        left, top = ((w - cw) * (k % 3)) // 2, ((h - ch) * ((k // 3) % 3)) // 2
        v = v.crop((left, top, left + cw, top + ch))
        if k >= 6:
            v = v.resize((max(64, v.width // 2), max(64, v.height // 2)), Image.BILINEAR)
        buffer = io.BytesIO()
        v.save(buffer, "JPEG", quality=(95, 70, 40)[k % 3])
        out.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return out


def collect(n_nir: int) -> list[Item]:
    items = []
    with (TRACKS / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            items.append(Item(row["path"], f"footprint-{row['split']}", TRACKS / row["path"]))
    for seed in range(n_nir):
        items.append(Item(f"nir-{seed}", "nir", nir_frame(seed, animal=seed % 3 != 0)))
    for name in SKIMAGE_OTHERS:
        items.append(Item(name, "object", skimage_photo(name)))
    for name in SKIMAGE_ANIMALS:
        for k, view in enumerate(views(skimage_photo(name))):
            items.append(Item(f"{name}-view{k}", "animal", view))
    return items


def general_model() -> tuple[torch.nn.Module, ModelCard, str]:
    """models/general-animals; built as timm's tf_efficientnet_lite0 (the architecture the
    packaged TensorFlow-trained weights belong to) when its card still names efficientnet_lite0."""
    import timm
    from safetensors.torch import load_file

    card = find_card("general-animals")
    arch = "tf_efficientnet_lite0" if card.arch == "efficientnet_lite0" else card.arch
    model = timm.create_model(arch, num_classes=card.num_classes)
    model.load_state_dict(load_file(str(card.weights_path)))
    note = f"{arch} with the card's weights" + (" (card says efficientnet_lite0)" if arch != card.arch else "")
    return model.eval(), card.replace(arch=arch), note


def tracks_model(items: list[Item]) -> tuple[torch.nn.Module, ModelCard, str]:
    """models/tracks-families if installed, else a stand-in linear probe on the train split."""
    from wildid.registry import build_network

    try:
        card = find_card("tracks-families")
        if card.has_weights:
            return build_network(card).eval(), card, "models/tracks-families"
    except Exception:  # noqa: BLE001 - not installed yet
        pass
    import timm
    from sklearn.linear_model import LogisticRegression

    from wildid.backbones import lite0_package_state_dict

    classes = ("bear", "canid", "deer", "felid", "mustelid")
    card = ModelCard(name="tracks-families-standin", arch="tf_efficientnet_lite0", classes=classes,
                     mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic", crop_pct=0.875)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    model.load_state_dict(lite0_package_state_dict())
    torch.manual_seed(0)  # a fixed head before fitting: the feature cache key stays the same
    model.reset_classifier(len(classes))
    model.eval()
    train = [it for it in items if it.group == "footprint-train"]
    _, feats = forward_all(model, card, train)
    labels = [classes.index(Path(it.name).parts[0]) for it in train]
    clf = LogisticRegression(C=1.0, max_iter=3000).fit(feats, labels)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor(clf.coef_, dtype=torch.float32))
        model.classifier.bias.copy_(torch.tensor(clf.intercept_, dtype=torch.float32))
    return model, card, "stand-in: logistic regression on packaged Lite0 features, train split"


def forward_all(model, card: ModelCard, items: list[Item], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Logits and pooled features of every item, cached on disk (keyed by weights + image list)."""
    import hashlib

    key = hashlib.sha1(repr((card.name, card.arch, [it.name for it in items],
                             sum(float(p.detach().double().sum()) for p in model.parameters()))).encode()).hexdigest()[:16]
    cache = Path.home() / ".cache" / "wildid" / "bench-scope" / f"{card.name}-{key}.npz"
    if cache.is_file():
        with np.load(cache) as stored:
            return stored["logits"], stored["features"]
    logits, feats = _forward_all(model, card, items, batch_size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, logits=logits, features=feats)
    return logits, feats


def _forward_all(model, card: ModelCard, items: list[Item], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    transform = build_transform(card)
    draft = draft_size_for(card)
    logits, feats = [], []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = torch.stack([transform(load_image(it.image, draft_size=draft)) for it in chunk])
        with torch.inference_mode():
            out, pooled = pooled_features_and_logits(model, batch)
        logits.append(out.numpy())
        feats.append(pooled.numpy())
    return np.concatenate(logits), np.concatenate(feats)


def evaluate(title: str, logits: np.ndarray, feats: np.ndarray, groups: np.ndarray, fit_mask: np.ndarray,
             fit_labels: np.ndarray | None, calib_in: np.ndarray, calib_out: np.ndarray,
             test_in: np.ndarray, test_outs: dict[str, np.ndarray]) -> dict[str, dict]:
    print(f"\n== {title}")
    header = f"{'score':<12} {'AUROC ' + ' / '.join(test_outs):<44} {'threshold':>10} {'in kept':>8} {'out rejected':>12}"
    print(header)
    results = {}
    for kind in scope.SCORES:
        if kind in scope.FEATURE_SCORES:
            stats = scope.FeatureStats.fit(kind, feats[fit_mask], fit_labels)
            values = stats.score(feats)
        else:
            stats = None
            values = scope.logit_score(kind, logits)
        aurocs = [scope.auroc(values[test_in], values[mask]) for mask in test_outs.values()]
        threshold = scope.calibrate_threshold(values[calib_in], values[calib_out])
        all_out = np.logical_or.reduce(list(test_outs.values()))
        summary = scope.summary(values[test_in], values[all_out], threshold)
        results[kind] = {"values": values, "threshold": threshold, "aurocs": aurocs, "summary": summary,
                         "stats": stats}
        print(f"{kind:<12} {' / '.join(f'{a:.3f}' for a in aurocs):<44} {threshold:>10.3f} "
              f"{summary['in_scope_kept']:>8.0%} {summary['out_of_scope_rejected']:>12.0%}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nir", type=int, default=60, help="generated NIR frames")
    parser.add_argument("--write-cards", action="store_true", help="store the best score + threshold in the cards")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.time()
    items = collect(args.nir)
    groups = np.array([it.group for it in items])
    print("images: " + ", ".join(f"{g} {int((groups == g).sum())}" for g in sorted(set(groups))))

    # --- general model ---------------------------------------------------------------------------------
    model, card, note = general_model()
    logits, feats = forward_all(model, card, items)
    probs = scope.softmax(logits)
    print(f"general-animals: {note}; {time.time() - started:.0f} s so far")
    footprint = np.char.startswith(groups.astype(str), "footprint")
    nir = groups == "nir"
    # Calibration: the animal views vs the footprint train split and the first half of the NIR frames;
    # figures on the rest (footprint valid + test, second half of NIR, the objects).
    nir_index = np.cumsum(nir) - 1
    calib_out = (groups == "footprint-train") | (nir & (nir_index < args.nir // 2))
    test_foot = footprint & (groups != "footprint-train")
    test_nir = nir & (nir_index >= args.nir // 2)
    animal = groups == "animal"
    general = evaluate(
        "general-animals: in scope = 12 views of 1 real animal photo; out = footprints (valid+test), NIR, objects",
        logits, feats, groups, fit_mask=animal, fit_labels=None, calib_in=animal, calib_out=calib_out,
        test_in=animal, test_outs={"footprints": test_foot, "nir": test_nir, "objects": groups == "object"})
    confident = probs.max(axis=1) >= card.threshold
    print(f"\nfootprints shown as a confident answer by general-animals (confidence >= {card.threshold:.0%}):")
    print(f"  without a scope check: {int((confident & footprint).sum())} of {int(footprint.sum())}")
    for kind, result in general.items():
        shown = confident & (result["values"] >= result["threshold"])
        print(f"  {kind:<12} {int((shown & test_foot).sum())} of {int(test_foot.sum())} held-out, "
              f"{int((shown & footprint).sum())} of {int(footprint.sum())} all; animal views kept "
              f"{int((result['values'][animal] >= result['threshold']).sum())} of {int(animal.sum())}")

    # Footprints the energy score lets through: a kNN bank of footprint features beside the model
    # (wildid.scope exclusions).  Bank: footprint train split; threshold: footprint valid split
    # (excluded at 95%) against the animal views (kept); figures on the footprint test split.
    bank = scope.FeatureStats.fit("knn", feats[groups == "footprint-train"])
    like_footprints = bank.score(feats)
    exclude_threshold = scope.calibrate_threshold(like_footprints[groups == "footprint-valid"],
                                                  like_footprints[animal])
    excluded = like_footprints >= exclude_threshold
    test_only = groups == "footprint-test"
    energy = general["energy"]
    shown_energy = confident & (energy["values"] >= energy["threshold"])
    print(f"\nfootprint exclusion (kNN to {int((groups == 'footprint-train').sum())} train-split footprints, "
          f"threshold {exclude_threshold:.3f} from the valid split vs the animal views):")
    print(f"  AUROC footprint test split vs animal views: "
          f"{scope.auroc(like_footprints[test_only], like_footprints[animal]):.3f}")
    print(f"  test-split footprints excluded: {int((excluded & test_only).sum())} of {int(test_only.sum())}; "
          f"animal views excluded: {int((excluded & animal).sum())} of {int(animal.sum())}; "
          f"objects {int((excluded & (groups == 'object')).sum())} of {int((groups == 'object').sum())}, "
          f"NIR {int((excluded & nir).sum())} of {int(nir.sum())}")
    print(f"  test-split footprints still shown as a confident answer: energy alone "
          f"{int((shown_energy & test_only).sum())}, energy + exclusion {int((shown_energy & ~excluded & test_only).sum())} "
          f"of {int(test_only.sum())}")

    # --- track model --------------------------------------------------------------------------------------
    track_model, track_card, track_note = tracks_model(items)
    t_logits, t_feats = forward_all(track_model, track_card, items)
    print(f"\ntracks: {track_note}; {time.time() - started:.0f} s so far")
    train = groups == "footprint-train"
    labels = np.array([track_card.classes.index(Path(it.name).parts[0]) if it.group.startswith("footprint") else -1
                       for it in items])
    not_track = ~footprint
    calib_out_t = not_track & (np.arange(len(items)) % 2 == 0)
    test_out_t = not_track & ~calib_out_t
    tracks_results = evaluate(
        "tracks: in scope = footprint test split; out = NIR, objects, animal photo views (odd-indexed half)",
        t_logits, t_feats, groups, fit_mask=train, fit_labels=labels[train], calib_in=groups == "footprint-valid",
        calib_out=calib_out_t, test_in=groups == "footprint-test",
        test_outs={"nir": test_out_t & nir, "objects": test_out_t & (groups == "object"),
                   "animal": test_out_t & animal})
    t_pred = t_logits.argmax(axis=1)
    test = groups == "footprint-test"
    print(f"  track model top-1 on the test split: {(t_pred[test] == labels[test]).mean():.3f} ({int(test.sum())} photos)")
    print(f"\ntotal {time.time() - started:.0f} s")

    if args.write_cards:
        # The general model has no training images here: a logit score (energy, the best of them above).
        chosen = general["energy"]
        general_card = find_card("general-animals")
        general_card = general_card.replace(scope={
            **({"exclude": general_card.scope_exclusion} if general_card.scope_exclusion else {}),
            "score": "energy", "threshold": round(float(chosen["threshold"]), 4),
            "in_scope_recall": scope.IN_SCOPE_RECALL,
            "calibration": (f"{int(animal.sum())} views of 1 real animal photo in scope; "
                            f"{int(calib_out.sum())} footprint (train split) and NIR frames out of scope"),
            "measured_by": f"bench/scope.py ({note}); feature scores need training images, which ImageNet models "
                           f"do not ship",
        })
        general_card.save(general_card.folder, classes_file=True)
        print(f"wrote the energy scope (threshold {chosen['threshold']:.3f}) into {general_card.folder}/card.toml")
        from wildid.registry import load_predictor

        # The exclusion through the predictor itself, so the bank holds exactly the runtime features.
        written = scope.calibrate_exclusion(
            load_predictor(general_card.folder, backend="torch"), "footprints",
            fit_images=[it.image for it in items if it.group == "footprint-train"],
            calib_excluded=[it.image for it in items if it.group == "footprint-valid"],
            calib_kept=[it.image for it in items if it.group == "animal"], suggest_task="tracks",
            measured_by=f"bench/scope.py: footprint test split excluded "
                        f"{int((excluded & test_only).sum())} of {int(test_only.sum())}, animal views kept "
                        f"{int((~excluded & animal).sum())} of {int(animal.sum())}")
        print(f"wrote the footprint exclusion (threshold {written.scope_exclusion['threshold']:.3f}) into "
              f"{general_card.folder}")
        if track_card.folder is not None and track_note == "models/tracks-families":
            from wildid.registry import load_predictor

            predictor = load_predictor(track_card.folder)
            train_items = [it for it in items if it.group == "footprint-train"]
            calib_in_items = [it.image for it in items if it.group == "footprint-valid"]
            calib_out_items = [it.image for it, flag in zip(items, calib_out_t) if flag]
            written = scope.calibrate_model(
                predictor, "knn", calib_in_items, calib_out_items, [it.image for it in train_items],
                [track_card.classes.index(Path(it.name).parts[0]) for it in train_items],
                measured_by=f"bench/scope.py: test-split AUROC "
                            f"{', '.join(f'{k} {a:.3f}' for k, a in zip(('nir', 'objects', 'animal'), tracks_results['knn']['aurocs']))}")
            print(f"wrote the knn scope (threshold {written.scope_threshold:.3f}) into {track_card.folder}")


if __name__ == "__main__":
    main()
