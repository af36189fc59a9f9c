"""Re-identification: embedding predictor, galleries (append only), open-set identify, training, CLI.

Individuals are generated coats (tests/reidgen.py): a spot pattern per identity, seen
rotated, shifted and brighter or darker.  The "known good" model is a deterministic
handcrafted-feature embedding saved as TorchScript behind an ordinary card
(kind="embedding"); training is tested separately on tiny timm backbones.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.reidgen import coat_view, make_handcrafted_model, write_individuals
from wildid import cli, reid
from wildid.errors import DataError, WildidError
from wildid.registry import load_predictor, save_model

MODEL = "coat-handcrafted"
KNOWN = range(6)
GALLERY_VIEWS = range(3)


@pytest.fixture(scope="session")
def _handcrafted_master(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reid-models")
    make_handcrafted_model(root, MODEL)
    return root


@pytest.fixture()
def reid_env(models_root, _handcrafted_master, tmp_path, monkeypatch) -> Path:
    """Tiny models + the handcrafted embedding on WILDID_MODELS; a private galleries root."""
    shutil.copytree(_handcrafted_master / MODEL, models_root / MODEL)
    monkeypatch.setenv("WILDID_TRUSTED_MODELS", MODEL)  # TorchScript holds code: trusted explicitly
    galleries = tmp_path / "galleries"
    monkeypatch.setenv("WILDID_GALLERIES", str(galleries))
    return galleries


@pytest.fixture()
def known_folder(tmp_path) -> Path:
    return write_individuals(tmp_path / "known", KNOWN, GALLERY_VIEWS)


@pytest.fixture()
def gallery(reid_env, known_folder):
    embedder = reid.load_embedder(MODEL)
    g = reid.Gallery.create("lynx", embedder.card)
    reid.add_folder(g, known_folder, embedder)
    return g


# --- the embedding predictor ----------------------------------------------------------------------
def test_registry_returns_an_embedding_predictor_with_unit_vectors(reid_env):
    predictor = load_predictor(MODEL)
    assert isinstance(predictor, reid.EmbeddingPredictor)
    assert predictor.card.kind == "embedding" and predictor.card.task == "reid"
    vectors = predictor.embed([coat_view(1, 1), coat_view(2, 1), coat_view(3, 1)])
    assert vectors.shape == (3, 22) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    with pytest.raises(WildidError, match="embedding"):
        predictor.predict([coat_view(1, 1)])


def test_timm_backbone_embedding_model_saves_loads_and_exports(models_root):
    import timm

    card = reid.embedding_card("tiny-embed", "test_resnet", input_size=64)
    torch.manual_seed(0)
    save_model(timm.create_model("test_resnet", num_classes=0), card, models_root / "tiny-embed")
    torch_predictor = load_predictor("tiny-embed")
    images = [coat_view(i, 1, 64) for i in range(3)]
    vectors = torch_predictor.embed(images)
    assert vectors.shape == (3, 96)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    onnx_predictor = load_predictor("tiny-embed", backend="onnx")
    assert isinstance(onnx_predictor, reid.OnnxEmbeddingPredictor)
    np.testing.assert_allclose(onnx_predictor.embed(images), vectors, atol=1e-4)
    with pytest.raises(WildidError, match="classifier"):
        reid.load_embedder("tiny")


# --- scores and thresholds -----------------------------------------------------------------------------
def test_choose_threshold_maximises_youden_j():
    # Clean gap between 0.6 and 0.8: the middle of it.
    assert reid.choose_threshold([0.9, 0.95, 0.8], [0.3, 0.5, 0.6]) == pytest.approx(0.7, abs=1e-6)
    # Overlap: 0.72 splits 3/4 known above and 4/4 unknown below (J = 0.75, better than any other cut).
    known, unknown = [0.9, 0.85, 0.75, 0.55], [0.7, 0.6, 0.4, 0.2]
    threshold = reid.choose_threshold(known, unknown)
    assert 0.7 < threshold < 0.75
    with pytest.raises(DataError):
        reid.choose_threshold([0.9], [])


def test_individual_scores_max_and_mean_of_top():
    sims = np.array([[0.9, 0.1, 0.5, 0.7, 0.8]])
    labels = ["a", "a", "a", "b", "b"]
    names, scores, best = reid.individual_scores(sims, labels, "max")
    assert names == ["a", "b"] and scores[0].tolist() == pytest.approx([0.9, 0.8]) and best[0].tolist() == [0, 4]
    _, mean_scores, _ = reid.individual_scores(sims, labels, "mean", top_n=2)
    assert mean_scores[0].tolist() == pytest.approx([0.7, 0.75])  # b wins on its two good images


# --- identification (open set) ------------------------------------------------------------------------
# Above ~1.2x the brightest coats clip to white, which really changes them (see the rotation test).
@pytest.mark.parametrize("brighten", [0.7, 0.85, 1.15])
def test_same_individual_is_identified_under_a_brightness_change(gallery, brighten):
    embedder = reid.load_embedder(MODEL)
    queries = [coat_view(i, 50, rotate=0.0, brighten=brighten) for i in KNOWN]
    results = reid.identify(embedder, gallery, queries, top_k=3)
    assert [r.label for r in results] == [f"lynx-{i:03d}" for i in KNOWN]
    for result in results:
        assert result.known and result.similarity >= result.threshold
        assert result.matches[0].image.is_file() and result.matches[0].image.parent.name == result.label
        assert result.matches[0].similarity > result.matches[1].similarity


def test_same_individual_ranks_first_under_rotation_and_brightness(gallery):
    """Rotated views show another part of the coat, so the handcrafted statistics drift: the right
    individual still ranks first every time, and the open-set threshold (tuned for balanced
    accuracy on other individuals) accepts nearly all of them."""
    embedder = reid.load_embedder(MODEL)
    conditions = [(r, b) for r in (-25.0, -10.0, 10.0, 25.0) for b in (0.7, 1.3)]
    queries = [coat_view(i, 51 + k, rotate=r, brighten=b) for k, (r, b) in enumerate(conditions) for i in KNOWN]
    results = reid.identify(embedder, gallery, queries, top_k=2)
    assert [r.matches[0].individual for r in results] == [f"lynx-{i:03d}" for _ in conditions for i in KNOWN]
    assert all(r.matches[0].similarity > r.matches[1].similarity for r in results)
    assert np.mean([r.known for r in results]) >= 0.85


def test_new_individuals_are_rejected(gallery):
    embedder = reid.load_embedder(MODEL)
    newcomers = [coat_view(identity, 1) for identity in range(900, 920)]
    results = reid.identify(embedder, gallery, newcomers)
    rejected = [r.label == reid.UNKNOWN for r in results]
    assert np.mean(rejected) >= 0.8
    # The gallery is too small to choose its own threshold: the card's (from validation data) applies.
    assert gallery.threshold(embedder.card) == pytest.approx(embedder.card.threshold)
    assert results[0].to_dict()["matches"][0]["individual"].startswith("lynx-")


def test_evaluate_reid_figures_on_generated_individuals(reid_env, tmp_path):
    data = write_individuals(tmp_path / "eval", range(20), range(4))
    embedder = reid.load_embedder(MODEL)
    result = reid.evaluate_reid(embedder, data, known_fraction=0.5, gallery_fraction=0.5)
    assert result["known_queries"] == 20 and result["unknown_queries"] == 40
    assert result["top1"] >= 0.95 and result["top5"] == 1.0
    assert result["open_set_auroc"] >= 0.95
    assert result["unknown_rejected"] >= 0.8


def test_open_set_split_keeps_unknown_individuals_out_of_the_gallery():
    groups = {f"ind{i}": [f"ind{i}/{j}.jpg" for j in range(4)] for i in range(6)}
    gallery, known, unknown = reid.open_set_split(groups, known_fraction=0.5)
    assert set(gallery) == set(known) and not set(unknown) & set(gallery)
    assert len(gallery) == 3 and len(unknown) == 3
    for name in known:
        assert not set(known[name]) & set(gallery[name]) and len(gallery[name]) == 2


# --- galleries: append only ----------------------------------------------------------------------------------
def test_gallery_only_grows(gallery, tmp_path):
    embedder = reid.load_embedder(MODEL)
    index = gallery.folder / reid.INDEX_FILE
    before_index = index.read_bytes()
    before_embeddings = gallery.embeddings.copy()
    before_images = {p: p.read_bytes() for p in (gallery.folder / "images").rglob("*.jpg")}
    assert gallery.individuals() == {f"lynx-{i:03d}": 3 for i in KNOWN}

    again = reid.add_folder(gallery, tmp_path / "known", embedder)
    assert not again.added and len(again.skipped) == 18  # identical images are not filed twice

    with pytest.raises(DataError, match="already in gallery"):
        gallery.add("lynx-001", [coat_view(1, 60)], embedder, new_individual=True)
    with pytest.raises(DataError, match="no individual"):
        gallery.add("lynx-777", [coat_view(777, 1)], embedder, new_individual=False)
    confirmed = gallery.add("lynx-001", [coat_view(1, 61)], embedder, new_individual=False)
    registered = gallery.add("lynx-900", [coat_view(900, 1)], embedder, new_individual=True)
    assert [e.row for e in confirmed.added + registered.added] == [18, 19]

    reopened = reid.Gallery.open("lynx")
    assert index.read_bytes().startswith(before_index)
    np.testing.assert_array_equal(reopened.embeddings[:18], before_embeddings)
    assert all(p.read_bytes() == data for p, data in before_images.items())
    assert reopened.individuals()["lynx-001"] == 4 and reopened.individuals()["lynx-900"] == 1
    with open(index, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(reid.INDEX_COLUMNS)
    assert rows[-1]["individual"] == "lynx-900" and (gallery.folder / rows[-1]["image"]).is_file()
    with pytest.raises(DataError, match="already exists"):
        reid.Gallery.create("lynx", embedder.card)


def test_gallery_calibrates_its_own_threshold_once_large_enough(reid_env, tmp_path):
    embedder = reid.load_embedder(MODEL)
    g = reid.Gallery.create("big", embedder.card)
    reid.add_folder(g, write_individuals(tmp_path / "big", range(12), range(3)), embedder)
    assert g.meta["threshold_source"] == "gallery (leave-one-out)"
    assert 0 < g.threshold(embedder.card) <= 1


def test_gallery_refuses_another_model(gallery, models_root):
    import timm

    card = reid.embedding_card("other-embed", "test_resnet", input_size=64)
    save_model(timm.create_model("test_resnet", num_classes=0), card, models_root / "other-embed")
    with pytest.raises(DataError, match="built with model"):
        reid.identify(reid.load_embedder("other-embed"), gallery, [coat_view(1, 1)])


@pytest.mark.parametrize("name", ["", "../escape", "unknown", "a/b"])
def test_bad_names_are_refused(name):
    with pytest.raises(DataError):
        reid.check_name(name, "individual")


# --- CLI round trip --------------------------------------------------------------------------------------------
def test_cli_gallery_add_list_identify_round_trip(reid_env, known_folder, tmp_path, capsys):
    assert cli.main(["gallery", "add", str(known_folder), "--gallery", "lynx", "--model", MODEL, "-q"]) == 0
    assert "6 individuals, 18 images" in capsys.readouterr().out

    assert cli.main(["gallery", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [(g["name"], g["individuals"], g["images"], g["model"]) for g in listing["galleries"]] == [
        ("lynx", 6, 18, MODEL)
    ]

    known_query = coat_view(4, 70, rotate=15.0, brighten=0.8)
    known_query.save(tmp_path / "q-known.jpg", quality=92)
    coat_view(950, 2).save(tmp_path / "q-new.jpg", quality=92)
    code = cli.main(["identify", str(tmp_path / "q-known.jpg"), str(tmp_path / "q-new.jpg"),
                     "--gallery", "lynx", "--top-k", "3", "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["label"] == "lynx-004" and rows[0]["known"] is True
    assert rows[0]["matches"][0]["individual"] == "lynx-004" and len(rows[0]["matches"]) == 3
    assert rows[1]["label"] == "unknown" and rows[1]["known"] is False

    assert cli.main(["identify", str(tmp_path / "q-known.jpg"), "--gallery", "lynx"]) == 0
    assert "lynx-004  similarity" in capsys.readouterr().out

    # Adding the same folder again changes nothing (append only, duplicates skipped).
    assert cli.main(["gallery", "add", str(known_folder), "--gallery", "lynx", "-q"]) == 0
    assert "added 0 images (18 already there" in capsys.readouterr().out


def test_cli_user_errors_exit_2(reid_env, known_folder, tmp_path, capsys):
    assert cli.main(["identify", "x.jpg", "--gallery", "nope"]) == 2
    assert "no gallery named 'nope'" in capsys.readouterr().err
    assert cli.main(["gallery", "add", str(known_folder), "--gallery", "g", "--model", "tiny", "-q"]) == 2
    assert "classifier" in capsys.readouterr().err
    assert cli.main(["gallery", "add", str(tmp_path / "missing"), "--gallery", "g", "--model", MODEL]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_cli_evaluate_reid(reid_env, tmp_path, capsys):
    data = write_individuals(tmp_path / "eval", range(10), range(4))
    out = tmp_path / "reid-eval.json"
    assert cli.main(["evaluate-reid", str(data), "--model", MODEL, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "top-1 1.000" in text and "open-set rejection AUROC" in text
    assert json.loads(out.read_text())["top1"] == 1.0


# --- training --------------------------------------------------------------------------------------------------
def test_train_reid_improves_separation_of_unseen_individuals(models_root, tmp_path, capsys):
    data = write_individuals(tmp_path / "train", range(10), range(5), size=64)
    out = models_root / "reid-tiny"
    code = cli.main(["train-reid", str(data), "--out", str(out), "--arch", "test_resnet", "--epochs", "3",
                     "--input-size", "48", "--seed", "0"])
    assert code == 0
    assert "val pair AUROC" in capsys.readouterr().out
    predictor = load_predictor("reid-tiny")
    card = predictor.card
    assert isinstance(predictor, reid.EmbeddingPredictor) and card.kind == "embedding" and card.task == "reid"
    metrics = card.metrics
    # Validation individuals were never trained on: the gain is open-set.
    assert len(card.provenance["val_individuals"]) == 3 and card.provenance["train_individuals"] == 7
    assert metrics["val_pair_auroc"] >= metrics["val_pair_auroc_untrained"] + 0.03
    assert 0 < card.threshold <= 1
    assert predictor.embed([coat_view(1, 1, 64)]).shape == (1, 96)
    # No silent overwrite of a trained model.
    assert cli.main(["train-reid", str(data), "--out", str(out), "--arch", "test_resnet", "--epochs", "1"]) == 2


def test_batch_hard_triplet_loss_picks_hardest_pairs():
    e = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.0, -1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    loss = reid.batch_hard_triplet_loss(e, labels, margin=0.3)
    # Per anchor: hardest positive distance - hardest negative distance + margin (distance = 1 - cos):
    # 1 - 0.005 + 0.3, 1 - 0.9005 + 0.3, 1.0995 - 0.005 + 0.3, 1.0995 - 1 + 0.3.
    assert float(loss) == pytest.approx((1.295 + 0.3995 + 1.3945 + 0.3995) / 4, abs=2e-3)
    separated = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.05], [-1.0, 0.0], [-1.0, 0.05]]), dim=1)
    assert float(reid.batch_hard_triplet_loss(separated, labels, margin=0.3)) == 0.0
