"""End to end: tiny models on generated labelled images; results + truth; results + journal; CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.imagegen import CLASS_STYLES, class_image, truncated_jpeg, write
from wildid import evaluate as ev
from wildid.errors import DataError

RESULTS_COLUMNS = ["path", "relpath", "label", "confidence", "top_k", "status", "error", "empty_score", "width",
                   "height", "mean_intensity", "laplacian_var", "dark", "overexposed", "blurry", "datetime", "camera",
                   "sequence_id", "model", "model_version"]


@pytest.fixture()
def image_folder(tmp_path) -> Path:
    """4 held-out images per class, plus one truncated JPEG under bobcat."""
    root = tmp_path / "labelled"
    for label, style in CLASS_STYLES.items():
        for seed in range(4):
            write(root / label / f"{style}_{seed}.jpg", class_image(style, seed=300 + seed), quality=90)
    write(root / "bobcat" / "broken.jpg", truncated_jpeg())
    (root / "bobcat" / "notes.txt").write_text("not an image")
    return root


def write_results(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, RESULTS_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in RESULTS_COLUMNS})
    return path


def synthetic_results(tmp_path: Path) -> tuple[Path, Path]:
    """20 results (one error); truth for 10 of them, written with relative paths."""
    rows, truth = [], []
    preds = ["a"] * 12 + ["b"] * 7 + [""]
    for i, pred in enumerate(preds):
        row = {"path": str(tmp_path / "imgs" / f"f{i}.jpg"), "relpath": f"f{i}.jpg", "label": pred,
               "confidence": f"{0.5 + i * 0.025:.3f}", "status": "accepted" if pred else "error",
               "error": "" if pred else "truncated", "model": "tiny"}
        rows.append(row)
    results = write_results(tmp_path / "batch.csv", rows)
    # Sample 5 predicted-a and 5 predicted-b; 2 of the predicted-b are truly a.
    for i in range(5):
        truth.append((f"imgs/f{i}.jpg", "a"))
    for i, label in zip(range(12, 17), ["b", "b", "a", "b", "a"]):
        truth.append((f"imgs/f{i}.jpg", label))
    truth.append(("imgs/f19.jpg", "b"))  # the error row: counted as unreadable
    truth_path = tmp_path / "truth.csv"
    with truth_path.open("w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *truth])
    return results, truth_path


def test_load_labelled_folder_and_csv(image_folder, tmp_path):
    items = ev.load_labelled(image_folder)
    assert len(items) == 13  # 12 images + the broken JPEG; notes.txt is skipped
    assert {item.label for item in items} == set(CLASS_STYLES)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label,group,crop\nlabelled/bobcat/bright_0.jpg,bobcat,cam1,\"1,2,30,40\"\n")
    [item] = ev.load_labelled(csv_path)
    assert item.path == tmp_path / "labelled/bobcat/bright_0.jpg" and item.crop == (1, 2, 30, 40) and item.group == "cam1"
    bad = tmp_path / "bad.csv"
    bad.write_text("file,species\nx.jpg,fox\n")
    with pytest.raises(DataError, match="path,label"):
        ev.load_labelled(bad)
    with pytest.raises(DataError, match="no images"):
        ev.load_labelled(tmp_path / "labelled" / "bobcat")


def test_run_predictor_tiny_model(models_root, image_folder):
    from wildid.registry import load_predictor

    calls = []
    run = ev.run_predictor(load_predictor("tiny"), ev.load_labelled(image_folder), progress=lambda d, t: calls.append((d, t)), batch_size=5)
    assert calls[0] == (0, 13) and calls[-1] == (13, 13) and len(calls) == 4
    assert len(run.y_true) == 12 and len(run.errors) == 1 and "broken.jpg" in run.errors[0]["path"]
    report = ev.build_report(run, threshold=0.5)
    assert report["summary"]["accuracy"] >= 0.9  # the tiny model separates dark / bright / striped
    assert report["labels"][: 3] == list(CLASS_STYLES)  # the card's class order
    assert report["confusion"]["counts"].sum() == 12
    assert sum(b["count"] for b in report["confidence_bins"]) == 12
    assert report["summary"]["errors"] == 1
    # Hover file lists per cell.
    fox = ev.cell_paths(report, "gray fox", report["items"][0]["pred"]) if report["items"][0]["true"] == "gray fox" else []
    assert all(Path(p).parent.name == "gray fox" for p in fox)


def test_results_plus_truth_with_correction(tmp_path):
    results, truth = synthetic_results(tmp_path)
    run = ev.from_results(results, truth)
    assert run.name == "tiny"
    assert len(run.y_true) == 10 and len(run.errors) == 1
    assert run.population == {"a": 12, "b": 7}
    report = ev.build_report(run, threshold=0.7)
    # Raw: predicted a 5/5 right; predicted b 3/5 right (2 truly a).
    assert report["summary"]["accuracy"] == pytest.approx(0.8)
    rows = {r["label"]: r for r in report["per_class"]}
    assert rows["a"]["recall"] == pytest.approx(5 / 7) and rows["b"]["precision"] == pytest.approx(0.6)
    # Corrected: column a x 12/5, column b x 7/5 -> a-a 12, a-b 2.8, b-b 4.2.
    corrected = {r["label"]: r for r in report["corrected"]["per_class"]}
    assert corrected["a"]["recall"] == pytest.approx(12 / 14.8)
    assert corrected["b"]["precision"] == pytest.approx(0.6)
    assert report["corrected"]["summary"]["accuracy"] == pytest.approx(16.2 / 19)
    assert report["corrected"]["population_size"] == 19 and report["corrected"]["sample_size"] == 10
    # confidences of the labelled, readable files: f0..f4 = .5-.6, f12..f16 = .8-.9
    assert report["threshold"]["kept"] == 5 and report["threshold"]["review"] == 5
    assert ev.rethreshold(report, 0.0)["kept"] == 10


def test_results_plus_journal_last_entry_wins(tmp_path):
    results, _ = synthetic_results(tmp_path)
    journal = ev.journal_path_for(results)
    assert journal.name == "batch.reviewed.csv"
    with journal.open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["path", "true_label", "reviewer", "reviewed_at", "predicted_label", "confidence"])
        w.writerow([str(tmp_path / "imgs" / "f12.jpg"), "a", "ann", "2024-05-01T10:00:00", "b", "0.8"])
        w.writerow([str(tmp_path / "imgs" / "f13.jpg"), "b", "ann", "2024-05-01T10:01:00", "b", "0.825"])
        w.writerow([str(tmp_path / "imgs" / "f12.jpg"), "b", "bob", "2024-05-01T11:00:00", "b", "0.8"])
    run = ev.from_journal(results)
    assert run.y_true == ["b", "b"] and run.y_pred == ["b", "b"]
    assert any("not a random sample" in note for note in run.notes)
    with pytest.raises(DataError, match="journal"):
        ev.from_journal(write_results(tmp_path / "other.csv", [{"path": "x", "label": "a", "confidence": "1"}]))


def test_truth_matching_nothing_is_a_clear_error(tmp_path):
    results, _ = synthetic_results(tmp_path)
    truth = tmp_path / "t.csv"
    truth.write_text("path,label\nnowhere/zzz.jpg,a\n")
    with pytest.raises(DataError, match="no true label matches"):
        ev.from_results(results, truth)


def test_json_roundtrip_and_html_is_self_contained(tmp_path):
    results, truth = synthetic_results(tmp_path)
    bundle = ev.combine([ev.build_report(ev.from_results(results, truth)), ev.build_report(ev.from_results(results, truth))])
    assert [m["name"] for m in bundle["models"]] == ["tiny", "tiny (2)"]
    path = ev.save_json(bundle, tmp_path / "r.json")
    loaded = ev.load_report(path)
    np.testing.assert_array_equal(loaded["models"][0]["confusion"]["counts"], bundle["models"][0]["confusion"]["counts"])
    assert loaded["compare"][0]["accuracy"] == pytest.approx(0.8)
    page = ev.to_html(bundle)
    assert page.count("* plotly.js v") == 1  # plotly.js inlined once, so the file opens offline
    assert "<script src=" not in page
    assert "Models side by side" in page and "Class-proportion corrected" in page
    assert "keeps" in page and "left for review" in page


def test_cli_evaluate_two_models_json_and_html(models_root, image_folder, tmp_path, capsys):
    from wildid.cli import main

    out, page = tmp_path / "report.json", tmp_path / "report.html"
    code = main(["evaluate", str(image_folder), "--model", "tiny", "--model", "tiny-vit", "--threshold", "0.6",
                 "--out", str(out), "--html", str(page), "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "tiny: 12 images, accuracy" in text and "tiny-vit: 12 images" in text and "1 unreadable" in text
    assert "left for review" in text
    bundle = json.loads(out.read_text())
    assert [m["name"] for m in bundle["models"]] == ["tiny", "tiny-vit"]
    assert all(m["summary"]["accuracy"] >= 0.9 for m in bundle["models"])
    assert bundle["models"][0]["threshold"]["threshold"] == 0.6
    assert len(bundle["compare"]) == 2 and "f1 bobcat" in bundle["compare"][0]
    assert page.stat().st_size > 1_000_000  # plotly.js inlined: opens offline


def test_cli_evaluate_results_with_truth_and_errors(tmp_path, capsys):
    from wildid.cli import main

    results, truth = synthetic_results(tmp_path)
    assert main(["evaluate", str(results), "--truth", str(truth), "--threshold", "0.7", "-q"]) == 0
    text = capsys.readouterr().out
    assert "tiny: 10 images, accuracy 0.800" in text and "class-proportion corrected: accuracy 0.853" in text
    assert main(["evaluate", str(results), "-q"]) == 2  # no truth and no journal
    assert "reviewed-labels journal" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing"), "--model", "tiny"]) == 2


def test_cli_crops_variants(models_root, tmp_path, capsys):
    from wildid.cli import main

    # Bright animal in a dark frame: the crop shows the animal, the full frame is mostly dark.
    frame = np.full((160, 200, 3), 30, np.uint8)
    frame[40:120, 60:160] = np.asarray(class_image("bright", seed=5, size=(100, 80)))
    from PIL import Image

    rows = ["path,label,crop"]
    for i in range(3):
        Image.fromarray(frame).save(tmp_path / f"cam{i}.jpg", quality=92)
        rows.append(f"cam{i}.jpg,bobcat,\"60,40,100,80\"")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "r.json"
    assert main(["evaluate", str(tmp_path / "labels.csv"), "-m", "tiny", "--crops", "--out", str(out), "-q"]) == 0
    bundle = json.loads(out.read_text())
    names = [m["name"] for m in bundle["models"]]
    assert names == ["tiny full-frame", "tiny cropped"]
    assert bundle["models"][1]["summary"]["accuracy"] == 1.0


def test_journal_with_a_torn_last_line(tmp_path):
    results, _ = synthetic_results(tmp_path)
    journal = ev.journal_path_for(results)
    journal.write_text(
        "path,true_label,reviewer,reviewed_at,predicted_label,confidence\n"
        f"{tmp_path / 'imgs' / 'f12.jpg'},a,ann,2024-05-01T10:00:00,b,0.8\n"
        f"{tmp_path / 'imgs' / 'f13.jpg'},b,ann,2024-05-01T10:01:00,b,0.8\n"
        f"{tmp_path / 'imgs' / 'f14.jpg'},\"co"  # a crash mid-write
    )
    run = ev.from_journal(results)
    assert run.y_true == ["a", "b"] and run.y_pred == ["b", "b"]


# --- answers above species rank ---------------------------------------------------------------------
def test_correct_at_rank_uses_the_taxonomy_of_true_labels():
    from wildid.registry import find_card
    from wildid.taxonomy import taxonomy_for

    names = taxonomy_for(find_card("general-animals"))
    assert ev.correct_at_rank("tabby", "tiger cat", "species", "Felis catus", names) is True  # same species
    assert ev.correct_at_rank("tabby", "tiger cat", "label", "", names) is False
    assert ev.correct_at_rank("elk", "ibex", "order", "Artiodactyla", names) is True  # an elk is a hoofed mammal
    assert ev.correct_at_rank("elk", "ibex", "family", "Bovidae", names) is False  # but no bovid
    assert ev.correct_at_rank("Cervidae", "ibex", "order", "Artiodactyla", names) is True
    assert ev.correct_at_rank("Cervidae", "ibex", "species", "Capra ibex", names) is False
    assert ev.correct_at_rank("Mammalia", "ibex", "species", "Capra ibex", names) is None  # coarser than the answer
    assert ev.correct_at_rank("yeti", "ibex", "order", "Artiodactyla", names) is None
    assert ev.correct_at_rank("ibex", "ibex", "uncertain", "", names) is None


def blend(path: Path) -> Path:
    from PIL import Image

    dark = np.asarray(class_image("dark", seed=300, size=(160, 120)), float)
    striped = np.asarray(class_image("striped", seed=300, size=(160, 120)), float)
    Image.fromarray(np.clip(0.3 * dark + 0.7 * striped, 0, 255).astype(np.uint8)).save(path)
    return path


def test_evaluate_reports_answers_per_rank_and_share_correct_at_rank(models_root, image_folder, tmp_path, capsys):
    from wildid.cards import load_card
    from wildid.cli import main

    folder = models_root / "tiny"
    load_card(folder).replace(threshold=0.6).save(folder)
    # Two fox-coyote blends filed as coyotes: the model answers "Canidae" (family), right at that rank.
    blend(image_folder / "coyote" / "blend_a.png")
    blend(image_folder / "coyote" / "blend_b.png")
    out = tmp_path / "report.json"
    assert main(["evaluate", str(image_folder), "--model", "tiny", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    [report] = json.loads(out.read_text())["models"]
    ranks = report["ranks"]
    by_rank = {row["rank"]: row for row in ranks["per_rank"]}
    assert by_rank["family"]["n"] == 2 and by_rank["family"]["correct"] == 2
    assert ranks["n"] == 14 and ranks["answers"] + ranks["uncertain"] == 14
    assert by_rank["species"]["n"] == ranks["answers"] - 2
    items = {Path(item["path"]).name: item for item in report["items"]}
    assert (items["blend_a.png"]["rank"], items["blend_a.png"]["taxon"], items["blend_a.png"]["correct_at_rank"]) == (
        "family", "Canidae", True)
    assert items["blend_a.png"]["correct"] is False  # top class gray fox: wrong as a species
    share = ranks["share_correct"]
    assert share >= report["summary"]["accuracy"]  # the family answers are credited at their rank
    assert f"correct at the rank given: {share:.1%} of {ranks['checked']} answers; answers by rank: species" in text
    assert "family 2" in text
    assert json.loads(out.read_text())["compare"][0]["correct_at_rank"] == pytest.approx(share)


def test_results_table_with_rank_columns(tmp_path):
    rows = [
        {"path": str(tmp_path / "a.jpg"), "label": "ibex", "confidence": "0.25", "status": "review", "model": "general-animals",
         "rank": "order", "taxon": "Artiodactyla"},
        {"path": str(tmp_path / "b.jpg"), "label": "ibex", "confidence": "0.20", "status": "review", "model": "general-animals",
         "rank": "family", "taxon": "Bovidae"},
        {"path": str(tmp_path / "c.jpg"), "label": "tabby", "confidence": "0.90", "status": "accepted",
         "model": "general-animals", "rank": "species", "taxon": "Felis catus"},
        {"path": str(tmp_path / "d.jpg"), "label": "coffee mug", "confidence": "0.05", "status": "review",
         "model": "general-animals", "rank": "", "taxon": ""},
    ]
    columns = RESULTS_COLUMNS + ["rank", "taxon", "taxon_confidence"]
    results = tmp_path / "batch.csv"
    with results.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows({c: row.get(c, "") for c in columns} for row in rows)
    truth = tmp_path / "truth.csv"
    truth.write_text("path,label\na.jpg,elk\nb.jpg,elk\nc.jpg,tiger cat\nd.jpg,moose\n", encoding="utf-8")
    report = ev.build_report(ev.from_results(results, truth))
    assert report["summary"]["accuracy"] == 0.0  # no top class is the true label
    ranks = report["ranks"]
    assert (ranks["answers"], ranks["uncertain"], ranks["checked"], ranks["correct"]) == (3, 1, 3, 2)
    assert [(row["rank"], row["n"], row["correct"]) for row in ranks["per_rank"]] == [
        ("species", 1, 1), ("family", 1, 0), ("order", 1, 1), ("uncertain", 1, 0)]
