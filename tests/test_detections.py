"""MegaDetector detections in: a hand-written batch-output file for a generated folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.imagegen import CLASS_STYLES, class_image, write
from wildid import detections as md
from wildid.batch import COLUMNS, export_json, run_batch
from wildid.cli import main
from wildid.errors import DataError
from wildid.registry import load_predictor

SIZE = (320, 240)
STYLE_OF = {style: label for label, style in CLASS_STYLES.items()}


def frame_with(animals: list[tuple[str, tuple[int, int, int, int]]], seed: int) -> Image.Image:
    """A grey noisy scene with class patches (dark / bright / striped) at pixel boxes."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(128, 6, (SIZE[1], SIZE[0], 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    for style, (x, y, w, h) in animals:
        img.paste(class_image(style, seed + x, (w, h)), (x, y))
    return img


def norm(box: tuple[int, int, int, int]) -> list[float]:
    x, y, w, h = box
    return [x / SIZE[0], y / SIZE[1], w / SIZE[0], h / SIZE[1]]


BOX_A = (40, 60, 100, 80)  # dark animal in a.png
BOX_B1 = (10, 20, 120, 90)  # bright, the better detection in b.png
BOX_B2 = (180, 120, 120, 100)  # striped, second animal in b.png


@pytest.fixture()
def md_folder(tmp_path) -> tuple[Path, Path, dict]:
    root = tmp_path / "frames"
    write(root / "a.png", frame_with([("dark", BOX_A)], 1))
    write(root / "cam2" / "b.png", frame_with([("bright", BOX_B1), ("striped", BOX_B2)], 2))
    write(root / "c.png", frame_with([], 3))
    write(root / "d.png", frame_with([], 4))
    write(root / "e.png", frame_with([("dark", (100, 100, 60, 50))], 5))
    write(root / "f.png", frame_with([("striped", BOX_A)], 6))  # not in the JSON
    write(root / "g.png", frame_with([], 7))
    data = {
        "info": {"format_version": "1.4", "detector": "md_v5a.0.0.pt"},
        "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
        "images": [
            {"file": "a.png", "detections": [
                {"category": "1", "conf": 0.91, "bbox": norm(BOX_A)},
                {"category": "1", "conf": 0.05, "bbox": [0.7, 0.7, 0.1, 0.1]},
            ]},
            {"file": "cam2\\b.png", "detections": [  # Windows separators, as MegaDetector on Windows writes
                {"category": "1", "conf": 0.62, "bbox": norm(BOX_B2)},
                {"category": "1", "conf": 0.95, "bbox": norm(BOX_B1)},
            ]},
            {"file": "c.png", "detections": []},
            {"file": str(root / "d.png"), "detections": [{"category": "2", "conf": 0.88, "bbox": [0.1, 0.1, 0.3, 0.6]}]},
            {"file": "e.png", "detections": [{"category": "1", "conf": 0.12, "bbox": norm((100, 100, 60, 50))}]},
            {"file": "g.png", "failure": "Failure image access"},
        ],
    }
    path = tmp_path / "md.json"
    path.write_text(json.dumps(data))
    return root, path, data


class SpyPredictor:
    """The tiny model, recording every image it is asked to preprocess."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def preprocess(self, image):
        self.seen.append(np.asarray(image).copy())
        return self.inner.preprocess(image)


def rows_of(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        return {row["relpath"]: row for row in reader}


def test_boxes_are_cropped_classified_and_listed(models_root, md_folder, tmp_path):
    root, md_json, _ = md_folder
    spy = SpyPredictor(load_predictor("tiny"))
    regions = md.DetectorRegions(md.read_detections(md_json, root), threshold=0.2)
    out = tmp_path / "r.csv"
    summary = run_batch(root, spy, out, recursive=True, regions=regions, batch_size=3)
    rows = rows_of(out)
    assert summary.statuses == {"accepted": 2, "empty": 3, "error": 2}

    # the crops are exactly the boxes (PNG: no draft scaling, so pixel for pixel)
    def region(name: str, box) -> np.ndarray:
        x, y, w, h = box
        return np.asarray(Image.open(root / name).convert("RGB"))[y:y + h, x:x + w]

    for name, box in (("a.png", BOX_A), ("cam2/b.png", BOX_B1), ("cam2/b.png", BOX_B2)):
        assert any(seen.shape == region(name, box).shape and np.array_equal(seen, region(name, box))
                   for seen in spy.seen), name
    assert not any(seen.shape[:2] == (SIZE[1], SIZE[0]) for seen in spy.seen)  # no whole frame classified

    a = rows["a.png"]
    assert a["status"] == "accepted" and a["label"] == "gray fox" and a["box_source"] == "detector"
    assert json.loads(a["box"]) == pytest.approx(norm(BOX_A), abs=1e-4)
    assert a["detection_count"] == "1" and float(a["detection_conf"]) == pytest.approx(0.91)
    listed = json.loads(a["detections"])
    assert len(listed) == 2 and "label" not in listed[1]  # the 0.05 box is kept, not classified

    b = rows["cam2/b.png"]
    assert b["detection_count"] == "2" and b["label"] == "bobcat"  # the best box (conf 0.95) decides
    assert json.loads(b["box"]) == pytest.approx(norm(BOX_B1), abs=1e-4)
    by_conf = {d["conf"]: d for d in json.loads(b["detections"])}
    assert by_conf[0.95]["label"] == "bobcat" and by_conf[0.62]["label"] == "coyote"
    assert by_conf[0.62]["bbox"] == pytest.approx(norm(BOX_B2), abs=1e-4)
    assert by_conf[0.62]["top_k"][0][0] == "coyote" and by_conf[0.62]["confidence"] > 0.5

    assert rows["c.png"]["status"] == "empty" and "no detections" in rows["c.png"]["error"]
    assert rows["d.png"]["status"] == "empty" and "person 0.88" in rows["d.png"]["error"]
    assert rows["e.png"]["status"] == "empty" and "conf >= 0.2" in rows["e.png"]["error"]
    assert all(rows[n]["label"] == "" and rows[n]["width"] == "320" for n in ("c.png", "d.png", "e.png"))
    assert rows["f.png"]["status"] == "error" and "not in md.json" in rows["f.png"]["error"]
    assert rows["g.png"]["status"] == "error" and "Failure image access" in rows["g.png"]["error"]


def test_cli_json_out_carries_boxes_and_classifications(models_root, md_folder, tmp_path):
    root, md_json, _ = md_folder
    out, js, sorted_dir = tmp_path / "r.csv", tmp_path / "r.json", tmp_path / "sorted"
    code = main(["batch", str(root), "-m", "tiny", "-r", "--out", str(out), "--detections", str(md_json),
                 "--json-out", str(js), "--sort-into", str(sorted_dir), "--quiet"])
    assert code == 1  # f.png and g.png are error rows
    data = json.loads(js.read_text())
    assert data["detection_categories"] == {"1": "animal", "2": "person", "3": "vehicle"}
    classes = data["classification_categories"]
    images = {image["file"]: image for image in data["images"]}
    b = images["cam2/b.png"]
    assert b["max_detection_conf"] == pytest.approx(0.95)
    named = {d["conf"]: classes[d["classifications"][0][0]] for d in b["detections"]}
    assert named == {0.95: "bobcat", 0.62: "coyote"}
    assert images["d.png"]["detections"][0]["category"] == "2" and "classifications" not in images["d.png"]["detections"][0]
    assert images["c.png"]["detections"] == [] and images["c.png"]["status"] == "empty"
    assert "failure" in images["g.png"]
    assert (sorted_dir / "_empty" / "c.png").is_file() and (sorted_dir / "gray fox" / "a.png").is_file()


def test_threshold_changes_what_is_classified(models_root, md_folder, tmp_path):
    root, md_json, _ = md_folder
    out = tmp_path / "r.csv"
    regions = md.DetectorRegions(md.read_detections(md_json, root), threshold=0.7)
    run_batch(root, load_predictor("tiny"), out, recursive=True, regions=regions)
    b = rows_of(out)["cam2/b.png"]
    assert b["detection_count"] == "1"  # the 0.62 box is below 0.7
    assert [d.get("label") for d in json.loads(b["detections"])] == [None, "bobcat"]


def bad_variants(data: dict, root: Path) -> dict[str, tuple[object, str]]:
    """name -> (file content, words the one-line message must contain)."""

    def edited(change) -> dict:
        copy = json.loads(json.dumps(data))
        change(copy)
        return copy

    def det(copy, **fields):
        copy["images"][0]["detections"][0].update(fields)

    return {
        "not json": ("{images: [", "not valid JSON"),
        "no images": ({"info": {"format_version": "1.4"}}, "no 'images' list"),
        "version 2": (edited(lambda c: c["info"].update(format_version="2.0")), "format_version 2.0"),
        "no version": (edited(lambda c: c.pop("info")), "no info.format_version"),
        "unknown file": (edited(lambda c: c["images"].append({"file": "nope.png", "detections": []})), "'nope.png' not found"),
        "outside box": (edited(lambda c: det(c, bbox=[0.6, 0.5, 0.6, 0.2])), "not inside the frame"),
        "pixel box": (edited(lambda c: det(c, bbox=[40, 60, 100, 80])), "pixel boxes are not MegaDetector"),
        "three numbers": (edited(lambda c: det(c, bbox=[0.1, 0.1, 0.2])), "is not [x, y, width, height]"),
        "zero width": (edited(lambda c: det(c, bbox=[0.1, 0.1, 0.0, 0.2])), "positive size"),
        "conf": (edited(lambda c: det(c, conf=1.5)), "conf 1.5"),
        "category": (edited(lambda c: det(c, category="7")), "category '7'"),
        "twice": (edited(lambda c: c["images"].append({"file": "a.png", "detections": []})), "listed twice"),
        "no file": (edited(lambda c: c["images"].append({"detections": []})), "has no 'file'"),
    }


def test_malformed_detections_give_one_line_and_write_nothing(models_root, md_folder, tmp_path, capsys):
    root, _, data = md_folder
    for name, (content, words) in bad_variants(data, root).items():
        bad = tmp_path / "bad.json"
        bad.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(DataError) as caught:
            md.read_detections(bad, root)
        assert words in str(caught.value), (name, str(caught.value))
        out = tmp_path / f"{name}.csv"
        capsys.readouterr()
        assert main(["batch", str(root), "-m", "tiny", "-r", "--out", str(out), "--detections", str(bad), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: bad.json: "), (name, err)
        assert not out.exists(), name


def test_evaluate_and_train_data_take_the_boxes(models_root, tmp_path):
    """Labelled frames with small animals: cropped to the MegaDetector box, the tiny model is
    right on every frame; on the whole (mostly grey) frame it is not."""
    from wildid.datasets import load_labelled
    from wildid.evaluate import evaluate

    root = tmp_path / "labelled"
    rows, images, boxes = [], [], []
    rng = np.random.default_rng(0)
    for i in range(9):
        label, style = list(CLASS_STYLES.items())[i % 3]
        x, y = int(rng.integers(0, 240)), int(rng.integers(0, 180))
        box = (x, y, 64, 48)
        boxes.append(box)
        name = f"{i:02d}.jpg"
        write(root / name, frame_with([(style, box)], 10 + i), quality=95)
        rows.append({"path": name, "label": label})
        images.append({"file": name, "detections": [{"category": "1", "conf": 0.9, "bbox": norm(box)}]})
    write(root / "labels.csv", "path,label\n".encode() + "".join(f"{r['path']},{r['label']}\n" for r in rows).encode())
    md_json = tmp_path / "md.json"
    md_json.write_text(json.dumps({"info": {"format_version": "1.3"}, "images": images}))

    data = load_labelled(root / "labels.csv")
    cropped = md.with_detections(data, md.read_detections(md_json, md.data_root(data)))
    assert [s.crop for s in cropped.samples] == [pytest.approx(b, abs=0.1) for b in boxes]  # pixels of the boxes
    bundle = evaluate(root / "labels.csv", ["tiny"], crops=True,
                      prepare=lambda d: md.with_detections(d, md.read_detections(md_json, md.data_root(d))))
    accuracy = {r["name"]: r["summary"]["accuracy"] for r in bundle["models"]}
    assert accuracy["tiny cropped"] == 1.0
    assert accuracy["tiny full-frame"] < 0.7


def test_cli_train_and_evaluate_take_detections(models_root, tmp_path, capsys):
    """`wildid train/evaluate --detections`: images without an animal box are left out; the
    training command in the card records the detections."""
    from wildid.cards import load_card

    root = tmp_path / "labelled"
    images, lines = [], ["path,label"]
    for i in range(6):
        label, style = list(CLASS_STYLES.items())[i % 3]
        box = (20 + 10 * i, 30, 80, 60)
        write(root / f"{i}.png", frame_with([(style, box)], 30 + i))
        lines.append(f"{i}.png,{label}")
        detections = [{"category": "1", "conf": 0.9, "bbox": norm(box)}] if i != 5 else []
        images.append({"file": f"{i}.png", "detections": detections})
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    md_json = tmp_path / "md.json"
    md_json.write_text(json.dumps({"info": {"format_version": "1.1"}, "images": images}))
    out = tmp_path / "models" / "boxed"
    assert main(["train", str(root / "labels.csv"), "--out", str(out), "--arch", "test_resnet", "--weights", "none",
                 "--folds", "0", "--epochs", "1", "--detections", str(md_json), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "5 images, 3 classes, 1 skipped" in printed  # 5.png has no animal box
    card = load_card(out)
    assert "--detections" in card.provenance["command"]
    assert main(["evaluate", str(root / "labels.csv"), "-m", "tiny", "--detections", str(md_json)]) == 0
    assert "tiny: 5 images, accuracy 1.000" in capsys.readouterr().out
