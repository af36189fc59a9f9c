"""Camtrap DP 1.0 out: a generated batch run -> a package that passes frictionless validation."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.imagegen import class_image, write
from tests.test_detections import frame_with, norm
from wildid import camtrap, review
from wildid import detections as md
from wildid.batch import run_batch
from wildid.cli import main
from wildid.errors import DataError
from wildid.registry import load_predictor

GPS = {"cam1": (61.5, 9.25), "cam2": (-33.75, 151.125)}  # (lat, lon): north-east and south-east


def exif_for(stamp: str, place: tuple[float, float] | None) -> Image.Exif:
    exif = Image.Exif()
    exif[272] = "TrailCam X"
    exif.get_ifd(0x8769)[36867] = stamp
    if place:
        lat, lon = place
        gps = exif.get_ifd(0x8825)

        def dms(value: float) -> tuple[float, float, float]:
            value = abs(value)
            degrees, minutes = int(value), int(value % 1 * 60)
            return (float(degrees), float(minutes), round((value - degrees - minutes / 60) * 3600, 4))

        gps.update({1: "N" if lat >= 0 else "S", 2: dms(lat), 3: "E" if lon >= 0 else "W", 4: dms(lon)})
    return exif


def make_run(tmp_path: Path, gps_for=("cam1", "cam2")) -> tuple[Path, Path]:
    """Two camera folders of three frames each, classified by the tiny model."""
    root = tmp_path / "frames"
    styles = ["dark", "bright", "striped"]
    for cam in ("cam1", "cam2"):
        for i in range(3):
            img = class_image(styles[i], 40 + i + (cam == "cam2") * 10, (160, 120))
            exif = exif_for(f"2024:03:0{1 + i} 0{i}:15:00", GPS[cam] if cam in gps_for else None)
            write(root / cam / f"IMG_{i:04d}.jpg", img, exif=exif)
    write(root / "cam1" / "broken.jpg", b"not an image")
    out = tmp_path / "results.csv"
    run_batch(root, load_predictor("tiny"), out, recursive=True)
    return root, out


def read_table(folder: Path, name: str) -> list[dict[str, str]]:
    with (folder / f"{name}.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_package_validates_and_reviews_are_human_classifications(models_root, tmp_path):
    root, results = make_run(tmp_path)
    review.append_label(results, str(root / "cam1" / "IMG_0000.jpg"), "coyote", "Ada", "gray fox", 0.9,
                        reviewed_at="2024-04-01T10:00:00+02:00")
    review.append_label(results, str(root / "cam2" / "IMG_0001.jpg"), "empty", "Ben", "bobcat", 0.8)
    summary = camtrap.export_camtrap_dp(results, tmp_path / "pkg", utc_offset="+01:00", contributor="Tunnel Project")
    pkg = tmp_path / "pkg"
    assert camtrap.validate_package(pkg) == []
    assert summary.counts == {"deployments": 2, "media": 6, "observations": 6}
    assert summary.to_fill == []
    assert any("1 unreadable" in n for n in summary.notes)

    deployments = {d["deploymentID"]: d for d in read_table(pkg, "deployments")}
    assert float(deployments["cam1"]["latitude"]) == pytest.approx(61.5, abs=1e-4)
    assert float(deployments["cam2"]["longitude"]) == pytest.approx(151.125, abs=1e-4)
    assert float(deployments["cam2"]["latitude"]) == pytest.approx(-33.75, abs=1e-4)
    assert deployments["cam1"]["deploymentStart"] == "2024-03-01T00:15:00+01:00"
    assert deployments["cam1"]["deploymentEnd"] == "2024-03-03T02:15:00+01:00"
    assert deployments["cam1"]["cameraModel"] == "TrailCam X"
    media = {m["mediaID"]: m for m in read_table(pkg, "media")}
    assert set(media) == {f"{cam}/IMG_{i:04d}.jpg" for cam in ("cam1", "cam2") for i in range(3)}
    assert media["cam2/IMG_0002.jpg"]["fileMediatype"] == "image/jpeg" and media["cam2/IMG_0002.jpg"]["filePublic"] == "false"

    observations = {o["mediaID"]: o for o in read_table(pkg, "observations")}
    human = observations["cam1/IMG_0000.jpg"]
    assert (human["classificationMethod"], human["classifiedBy"], human["scientificName"]) == ("human", "Ada", "Canis latrans")
    assert human["classificationTimestamp"] == "2024-04-01T10:00:00+02:00" and human["classificationProbability"] == ""
    blank = observations["cam2/IMG_0001.jpg"]
    assert (blank["observationType"], blank["classificationMethod"], blank["classifiedBy"]) == ("blank", "human", "Ben")
    machine = observations["cam1/IMG_0002.jpg"]  # striped -> coyote, accepted by the tiny model
    assert machine["classificationMethod"] == "machine" and machine["observationType"] == "animal"
    assert machine["scientificName"] == "Canis latrans" and float(machine["classificationProbability"]) > 0.5
    assert machine["eventStart"] == machine["eventEnd"] == media["cam1/IMG_0002.jpg"]["timestamp"]
    descriptor = json.loads((pkg / "datapackage.json").read_text())
    names = {t["scientificName"]: t for t in descriptor["taxonomic"]}
    assert names["Canis latrans"]["taxonRank"] == "species" and names["Canis latrans"]["vernacularNames"]["eng"]
    assert descriptor["temporal"] == {"start": "2024-03-01", "end": "2024-03-03"}
    assert descriptor["spatial"]["type"] == "MultiPoint"


def test_missing_exif_is_listed_and_is_what_fails_validation(models_root, tmp_path):
    root, results = make_run(tmp_path, gps_for=("cam1",))
    summary = camtrap.export_camtrap_dp(results, tmp_path / "pkg")
    to_fill = " | ".join(summary.to_fill)
    assert "latitude / longitude (WGS84) of cam2" in to_fill and "contributors" in to_fill
    assert any("no UTC offset" in n and "Z" in n for n in summary.notes)
    problems = camtrap.validate_package(tmp_path / "pkg")
    # exactly the two fields said to be missing (cam2's row), nothing else
    assert problems and all("deployments" in p and ("latitude" in p or "longitude" in p) for p in problems), problems
    assert read_table(tmp_path / "pkg", "media")[0]["timestamp"].endswith("Z")
    with pytest.raises(DataError, match="not empty"):
        camtrap.export_camtrap_dp(results, tmp_path / "pkg")


def test_detections_become_boxed_observations_and_people(models_root, tmp_path):
    root = tmp_path / "frames"
    box = (40, 60, 100, 80)
    for i, (name, animals) in enumerate([("a.png", [("dark", box)]), ("b.png", []), ("c.png", [])]):
        write(root / name, frame_with(animals, i), exif=exif_for(f"2024:05:01 10:0{i}:00", GPS["cam1"]))
    md_json = tmp_path / "md.json"
    md_json.write_text(json.dumps({"info": {"format_version": "1.4"}, "images": [
        {"file": "a.png", "detections": [{"category": "1", "conf": 0.9, "bbox": norm(box)}]},
        {"file": "b.png", "detections": [{"category": "2", "conf": 0.8, "bbox": [0.1, 0.1, 0.2, 0.5]}]},
        {"file": "c.png", "detections": []},
    ]}))
    results = tmp_path / "r.csv"
    run_batch(root, load_predictor("tiny"), results, regions=md.DetectorRegions(md.read_detections(md_json, root)))
    summary = camtrap.export_camtrap_dp(results, tmp_path / "pkg", contributor="X")
    assert camtrap.validate_package(tmp_path / "pkg") == []
    observations = {o["mediaID"]: o for o in read_table(tmp_path / "pkg", "observations")}
    a = observations["a.png"]
    assert a["observationType"] == "animal" and a["scientificName"] == "Urocyon cinereoargenteus"
    assert [float(a[k]) for k in ("bboxX", "bboxY", "bboxWidth", "bboxHeight")] == pytest.approx(norm(box), abs=1e-4)
    assert observations["b.png"]["observationType"] == "human" and observations["b.png"]["classifiedBy"] == "MegaDetector"
    assert observations["c.png"]["observationType"] == "blank"
    assert summary.counts["observations"] == 3

    # the validation is real: a dangling mediaID and a type outside the vocabulary are caught
    rows = read_table(tmp_path / "pkg", "observations")
    rows[0]["mediaID"], rows[1]["observationType"] = "nope.png", "ghost"
    with (tmp_path / "pkg" / "observations.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    problems = " | ".join(camtrap.validate_package(tmp_path / "pkg"))
    assert "foreign key" in problems and '"nope.png"' in problems and '"ghost"' in problems and "enum" in problems


def test_cli_export_and_zip(models_root, tmp_path, capsys):
    _, results = make_run(tmp_path)
    assert main(["export", "camtrap-dp", str(results), str(tmp_path / "out"), "--contributor", "Y",
                 "--utc-offset", "+0100"]) == 0
    printed = capsys.readouterr().out
    assert "wrote Camtrap DP 1.0 package" in printed and "6 media" in printed
    assert main(["export", "camtrap-dp", str(results), str(tmp_path / "o2"), "--utc-offset", "1 hour"]) == 2
    assert "not +HH:MM" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    data, summary = camtrap.export_zip(results, contributor="Y")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert sorted(archive.namelist()) == ["datapackage.json", "deployments.csv", "media.csv", "observations.csv"]
    assert summary.counts["media"] == 6


def test_a_rolled_up_answer_is_an_animal_of_that_taxon_with_its_rank(models_root, tmp_path):
    """A review row whose answer is the dog family (no class sure) is published as Canidae, rank
    family, with the family's summed probability; a plain review row stays unclassified."""
    root, results = make_run(tmp_path)
    with results.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
        columns = list(rows[0])
    for row in rows:
        if row["path"].endswith("cam1/IMG_0000.jpg"):
            row.update(status="review", confidence="0.41", rank="family", taxon="Canidae", taxon_confidence="0.83")
        elif row["path"].endswith("cam2/IMG_0000.jpg"):
            row.update(status="review", confidence="0.35", rank="", taxon="", taxon_confidence="")
    with results.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    camtrap.export_camtrap_dp(results, tmp_path / "pkg", contributor="Tunnel Project")
    pkg = tmp_path / "pkg"
    assert camtrap.validate_package(pkg) == []
    observations = {o["mediaID"]: o for o in read_table(pkg, "observations")}
    family = observations["cam1/IMG_0000.jpg"]
    assert (family["observationType"], family["scientificName"], family["classificationMethod"]) == ("animal", "Canidae", "machine")
    assert float(family["classificationProbability"]) == pytest.approx(0.83)
    assert "answered at family level" in family["observationComments"]
    plain = observations["cam2/IMG_0000.jpg"]
    assert (plain["observationType"], plain["scientificName"]) == ("unclassified", "")
    descriptor = json.loads((pkg / "datapackage.json").read_text())
    assert {t["scientificName"]: t["taxonRank"] for t in descriptor["taxonomic"]}["Canidae"] == "family"
