"""The `wildid` command: predict, models, import, export-onnx."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import skimage.data
from PIL import Image

from wildid.cli import main

CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.fixture(scope="module")
def cat_photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "chelsea.jpg"
    Image.fromarray(skimage.data.chelsea()).save(path, quality=92)
    return path


def test_bundled_model_really_classifies_a_cat(cat_photo):
    """The acceptance check: `wildid predict cat.jpg --model general-animals --json` -> a cat first."""
    out = subprocess.run(
        [sys.executable, "-m", "wildid.cli", "predict", str(cat_photo), "--model", "general-animals", "--json"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    [row] = json.loads(out.stdout)
    assert row["label"] in CAT_CLASSES, row
    assert sum(c["score"] for c in row["top_k"][:3]) > 0.8  # the three top guesses are all cats here
    assert {c["label"] for c in row["top_k"][:3]} <= CAT_CLASSES


def test_coffee_is_not_a_confident_animal(capsys):
    path_img = Image.fromarray(skimage.data.coffee())
    from wildid.registry import load_predictor

    [prediction] = load_predictor("general-animals").predict([path_img])
    assert prediction.uncertain  # no animal in the picture: below the card threshold


def test_predict_text_and_errors(models_root, class_images, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    code = main(["predict", str(class_images["coyote"]), str(bad), "--model", "tiny", "--top-k", "2"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0  # the run completed: the unreadable file is an error line, counted below
    assert out[0].startswith(f"{class_images['coyote']}: coyote ")
    assert out[1] == f"{bad}: error: bad.jpg: not an image, or a format that cannot be read"
    assert out[2] == "1 of 2 images done, 1 could not be read"
    assert main(["predict", str(class_images["coyote"]), str(bad), "--model", "tiny", "--strict"]) == 1
    assert main(["predict", str(class_images["coyote"]), "--model", "tiny", "--strict"]) == 0


def test_models_lists_cards(models_root, capsys):
    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["models"]}
    assert rows["tiny"]["classes"] == 3 and rows["tiny"]["arch"] == "test_resnet"
    assert rows["empty-slot"]["weights"] == "missing"
    assert rows["general-animals"]["classes"] == 398


def test_slot_without_weights_explains(models_root, class_images, capsys):
    assert main(["predict", str(class_images["bobcat"]), "--model", "empty-slot"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model 'empty-slot'") and "wildid train" in err and err.count("\n") == 1


def test_export_onnx_and_onnx_backend(models_root, class_images, capsys):
    assert main(["export-onnx", "--model", "tiny"]) == 0
    assert (models_root / "tiny" / "model.onnx").is_file()
    capsys.readouterr()
    assert main(["predict", str(class_images["gray fox"]), "--model", "tiny", "--backend", "onnx", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] == "gray fox"


def test_unknown_model_is_one_line(capsys):
    assert main(["predict", "x.jpg", "--model", "no-such-model"]) == 2
    assert "no model named 'no-such-model'" in capsys.readouterr().err
