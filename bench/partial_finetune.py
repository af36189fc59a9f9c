"""Does partial fine-tuning on cached activations pay, against the default recipe, on real footprints?

    .venv/bin/python bench/partial_finetune.py [--threads 1] [--epochs 20] [--units 1,2]

Issue 12 asked to measure "partial fine-tuning of the last blocks on cached intermediate
activations, so an epoch costs seconds, not minutes" against the default recipe (logistic
regression on frozen features, C by grouped inner CV, d8 views).  Same data, same folds, same run:

* data: shared/data/tracks-families, train + valid splits (the test split stays unused), one row
  per footprint crop and per whole photo (scripts/build_tracks_families.training_csv); groups are
  photos and their near-duplicates, so a photo's crops never straddle a fold;
* backbone: tf_efficientnet_lite0 with the packaged ImageNet weights (the recipe's default);
* activations at the input of the last ``units`` trainable units (1 = conv_head + bn2, 2 = also the
  last MBConv block) are computed once for the 8 views (d8) of every row and kept in memory;
* baseline: the recipe's head (wildid.training.head.fit_logistic_head) on d8-averaged pooled
  features, which the frozen rest of the network makes from the same cache;
* partial fine-tuning: the last units + a new linear head (initialised from the baseline's head),
  torch AdamW, a random one of the 8 cached views per row and epoch, BatchNorm statistics frozen,
  early stopping on a grouped inner validation part of the training fold (log loss, patience 3);
  predictions average the logits over the 8 views, like the recipe's test-time views.

Figures: grouped 5-fold accuracy and log loss (mean +- std over folds), seconds per epoch.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.build_tracks_families import DATA, training_csv  # noqa: E402
from wildid.backbones import card_preprocessing, packaged_state_dict  # noqa: E402
from wildid.cards import ModelCard  # noqa: E402
from wildid.predictor import build_transform, draft_size_for  # noqa: E402
from wildid.training.data import inner_folds, make_folds  # noqa: E402
from wildid.training.features import load_sample  # noqa: E402
from wildid.training.head import fit_logistic_head, nll  # noqa: E402
from wildid.train import load_labelled  # noqa: E402
from wildid.views import expand_views  # noqa: E402

ARCH = "tf_efficientnet_lite0"


def split_network(model: nn.Module, units: int) -> tuple[nn.Module, nn.Module]:
    """(frozen trunk, trainable tail) of a timm EfficientNet; the tail ends in pooled features."""
    blocks = list(model.blocks)
    keep = len(blocks) - (units - 1)
    trunk = nn.Sequential(model.conv_stem, model.bn1, *blocks[:keep])
    tail = nn.Sequential(*blocks[keep:], model.conv_head, model.bn2, model.global_pool)
    return trunk.eval(), tail


def cache_activations(trunk: nn.Module, card: ModelCard, data, batch: int = 16) -> np.ndarray:
    """[N, 8, C, H, W] activations of every row's d8 views at the trunk's output (float16 to save memory)."""
    transform, draft = build_transform(card), draft_size_for(card)
    out = []
    started = time.perf_counter()
    for start in range(0, len(data.samples), batch):
        images = torch.stack([transform(load_sample(s, card.channel_mode, draft))
                              for s in data.samples[start:start + batch]])
        with torch.inference_mode():
            acts = trunk(expand_views(images, "d8"))  # [8*B, C, H, W], view-major
        acts = acts.reshape(8, len(images), *acts.shape[1:]).transpose(0, 1)
        out.append(acts.to(torch.float16).numpy())
        done = start + len(images)
        if done % 160 < batch:
            print(f"  activations {done}/{len(data.samples)} ({time.perf_counter() - started:.0f} s)", flush=True)
    return np.concatenate(out)


def tail_features(tail: nn.Module, acts: np.ndarray, batch: int = 64) -> np.ndarray:
    """[N, 8, D] pooled features from cached activations through the (frozen) tail."""
    tail.eval()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(acts), batch):
            chunk = torch.from_numpy(acts[start:start + batch].astype(np.float32))
            n, v = chunk.shape[:2]
            feats = tail(chunk.reshape(n * v, *chunk.shape[2:])).flatten(1)
            rows.append(feats.reshape(n, v, -1).numpy())
    return np.concatenate(rows)


def view_logits(tail: nn.Module, head: nn.Linear, acts: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits averaged over the 8 cached views."""
    features = tail_features(tail, acts, batch)  # [N, 8, D]
    with torch.inference_mode():
        return head(torch.from_numpy(features)).mean(1).numpy()


def freeze_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def finetune(tail: nn.Module, head: nn.Linear, acts: np.ndarray, y: np.ndarray, fit: np.ndarray,
             val: np.ndarray, epochs: int, seed: int, lr_tail: float = 1e-4, lr_head: float = 1e-3,
             batch: int = 32, patience: int = 3) -> tuple[nn.Module, nn.Linear, int, float]:
    """Train tail + head on rows ``fit``, early-stopping on rows ``val``; returns the best state,
    the epoch it came from and the seconds per epoch."""
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = [{"params": [p for p in tail.parameters()], "lr": lr_tail}, {"params": head.parameters(), "lr": lr_head}]
    opt = torch.optim.AdamW(params, weight_decay=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    best = (nll(view_logits(tail, head, acts[val]), y[val]), copy.deepcopy(tail.state_dict()),
            copy.deepcopy(head.state_dict()), 0)
    spent, waited = [], 0
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        tail.train()
        freeze_bn(tail)
        order = fit[torch.randperm(len(fit), generator=generator).numpy()]
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            views = rng.integers(0, 8, len(rows))
            x = torch.from_numpy(acts[rows, views].astype(np.float32))
            loss = loss_fn(head(tail(x).flatten(1)), torch.from_numpy(y[rows]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        spent.append(time.perf_counter() - started)
        val_loss = nll(view_logits(tail, head, acts[val]), y[val])
        if val_loss < best[0] - 1e-4:
            best, waited = (val_loss, copy.deepcopy(tail.state_dict()), copy.deepcopy(head.state_dict()), epoch), 0
        else:
            waited += 1
            if waited >= patience:
                break
    tail.load_state_dict(best[1])
    head.load_state_dict(best[2])
    return tail, head, best[3], float(np.mean(spent))


def main() -> None:
    import timm

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--units", default="1,2", help="how many last units to train, comma-separated")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = load_labelled(training_csv(DATA, Path(tmp) / "labels.csv", splits=("train", "valid")), groups="photo")
    classes = sorted({s.label for s in data.samples})
    y = np.array([classes.index(s.label) for s in data.samples])
    groups = [s.group for s in data.samples]
    folds = make_folds([s.label for s in data.samples], groups, args.folds, seed=0)
    card = ModelCard(name="bench", arch=ARCH, classes=tuple(classes), **card_preprocessing(ARCH, "package"))
    print(f"{len(y)} rows ({len(set(groups))} photo groups), {len(classes)} classes, {args.folds} grouped folds, "
          f"{args.threads} thread(s)")

    results: dict[str, list[tuple[float, float]]] = {}
    timing: dict[str, str] = {}
    for units in [int(u) for u in args.units.split(",")]:
        model = timm.create_model(ARCH, num_classes=0)
        model.load_state_dict({k: v for k, v in packaged_state_dict(ARCH).items() if not k.startswith("classifier")})
        trunk, tail0 = split_network(model.eval(), units)
        t0 = time.perf_counter()
        acts = cache_activations(trunk, card, data)
        cache_s = time.perf_counter() - t0
        print(f"units {units}: activations {acts.shape} float16 ({acts.nbytes / 1e6:.0f} MB) in {cache_s:.0f} s")
        features = tail_features(tail0, acts).mean(axis=1)  # d8-averaged pooled features, as the recipe
        if "logreg (recipe)" not in results:
            scores = []
            for tr, va in folds:
                head, _ = fit_logistic_head(features[tr], y[tr], len(classes), [groups[i] for i in tr])
                logits = head.logits(features[va])
                scores.append((float((logits.argmax(1) == y[va]).mean()), nll(logits, y[va], head.temperature)))
            results["logreg (recipe)"] = scores
            print(f"  logreg (recipe): {np.mean([s[0] for s in scores]):.3f}")
        name = f"partial fine-tuning, last {units} unit(s)"
        scores, epochs_used, per_epoch = [], [], []
        for k, (tr, va) in enumerate(folds):
            # Early stopping needs its own held-out part of the training fold (grouped).
            inner = inner_folds(y[tr], [groups[i] for i in tr], 5, seed=k)
            fit_part, stop_part = tr[inner[0][0]], tr[inner[0][1]]
            base, _ = fit_logistic_head(features[fit_part], y[fit_part], len(classes),
                                        [groups[i] for i in fit_part], calibrate=False)
            tail = copy.deepcopy(tail0)
            head = nn.Linear(features.shape[1], len(classes))
            with torch.no_grad():  # start from the recipe's head: fine-tuning can only move away if it helps
                head.weight.copy_(torch.from_numpy(base.weight.astype(np.float32)))
                head.bias.copy_(torch.from_numpy(base.bias.astype(np.float32)))
            tail, head, best_epoch, seconds = finetune(tail, head, acts, y, fit_part, stop_part, args.epochs, seed=k)
            logits = view_logits(tail, head, acts[va])
            # Temperature from the early-stopping part, as the recipe fits it on held-out logits.
            from wildid.training.head import fit_temperature

            temperature = fit_temperature(view_logits(tail, head, acts[stop_part]), y[stop_part])
            scores.append((float((logits.argmax(1) == y[va]).mean()), nll(logits, y[va], temperature)))
            epochs_used.append(best_epoch)
            per_epoch.append(seconds)
            print(f"  fold {k + 1}: accuracy {scores[-1][0]:.3f}, best epoch {best_epoch}, {seconds:.1f} s/epoch", flush=True)
        results[name] = scores
        timing[name] = (f"{np.mean(per_epoch):.1f} s per epoch ({len(fit_part)} rows), best epochs "
                        f"{', '.join(map(str, epochs_used))}; activations cached in {cache_s:.0f} s")
        del acts

    print(f"\n{'method':40s} {'accuracy':>16s} {'log loss':>16s}  cost")
    for name, scores in results.items():
        acc, loss = np.array([s[0] for s in scores]), np.array([s[1] for s in scores])
        print(f"{name:40s} {acc.mean():.3f} +- {acc.std():.3f}   {loss.mean():.3f} +- {loss.std():.3f}  {timing.get(name, '')}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
