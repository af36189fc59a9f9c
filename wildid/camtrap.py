"""Camtrap DP 1.0 out: a batch results table (+ its review journal) as a Camera Trap Data Package.

    summary = export_camtrap_dp("results.csv", "package/")
    summary.to_fill   # required fields the results could not give (coordinates, timestamps...)

The package (https://camtrap-dp.tdwg.org, the TDWG standard GBIF, Agouti and Wildlife Insights
exchange) is ``datapackage.json`` + three tables:

- ``deployments.csv``: one per camera folder (the folder a frame lies in): start and end from the
  frames' EXIF times, camera model, latitude / longitude from EXIF GPS when the frames have it.
- ``media.csv``: one per classified file (error rows are left out): timestamp, filePath (relative
  to the classified folder), media type.
- ``observations.csv``: media-level observations.  A frame reviewed by a person gives one
  ``human`` classification (the journal's last label, reviewer, time).  Otherwise: one per
  classified MegaDetector box (with its bbox) or one per frame; ``animal`` when batch accepted
  the label, ``unclassified`` when it went to review (the suggestion in the comments), ``blank``
  for an empty frame; people and vehicles the detector found become ``human`` / ``vehicle``.
  scientificName comes from species_info (wildid.species).  A frame whose answer rolled up to a
  higher taxon (no class sure, its family or order is: wildid.taxonomy) is an ``animal`` of that
  taxon, its rank in the package's taxonomic list (``taxonRank``) and its summed probability.

EXIF times without a UTC offset take ``utc_offset`` (default +00:00, and the summary says so).
Required fields the results cannot fill are left empty and listed in ``to_fill``: the package
then does not validate until they are filled in.
"""

from __future__ import annotations

import csv
import io
import json
import mimetypes
import re
import tempfile
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from wildid import detections as md
from wildid import species
from wildid.errors import DataError
from wildid.staged import staged_folder

VERSION = "1.0"
BASE_URL = f"https://raw.githubusercontent.com/tdwg/camtrap-dp/{VERSION}"
PROFILE_URL = f"{BASE_URL}/camtrap-dp-profile.json"
SCHEMA_DIR = Path(__file__).resolve().parent / "camtrap_schemas"
TABLES = ("deployments", "media", "observations")
BLANK_LABELS = frozenset({"empty", "blank", "nothing", "none", "no animal"})
HUMAN_LABELS = frozenset({"human", "person", "people"})
VEHICLE_LABELS = frozenset({"vehicle", "car"})
TAXON_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species", "subspecies")
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


def table_fields(name: str) -> list[str]:
    """Column names of a Camtrap DP table, in the order of its schema."""
    schema = json.loads((SCHEMA_DIR / f"{name}-table-schema.json").read_text(encoding="utf-8"))
    return [f["name"] for f in schema["fields"]]


@dataclass
class CamtrapExport:
    out: Path
    counts: dict[str, int]
    to_fill: list[str] = field(default_factory=list)  # required fields left empty: the user fills them in
    notes: list[str] = field(default_factory=list)  # defaults chosen for the user, worth checking

    def describe(self) -> str:
        counts = ", ".join(f"{n} {table}" for table, n in self.counts.items())
        return f"wrote Camtrap DP {VERSION} package {self.out} ({counts})"


def parse_offset(text: str | None) -> timezone | None:
    if not text:
        return None
    found = _OFFSET.match(text.strip())
    if not found:
        raise DataError(f"--utc-offset {text!r} is not +HH:MM or -HH:MM (e.g. +01:00)")
    sign = 1 if found.group(1) == "+" else -1
    return timezone(sign * timedelta(hours=int(found.group(2)), minutes=int(found.group(3))))


def _timestamp(text: str, offset: timezone) -> tuple[datetime | None, bool]:
    """(aware datetime, whether the offset was assumed) from the results' ISO datetime."""
    if not text:
        return None, False
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None, False
    if value.tzinfo is None:
        return value.replace(tzinfo=offset), True
    return value, False


def _iso(value: datetime | None) -> str:
    if value is None:
        return ""
    text = value.isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._") or "wildid-export"


def _taxon(label: str) -> dict[str, Any] | None:
    """scientificName (and rank, common name) of a label from species_info, or None."""
    try:
        info = species.find_species(label)
    except species.SpeciesInfoError:
        info = None
    if info is None:
        return None
    entry: dict[str, Any] = {"scientificName": info.scientific_name}
    rank = getattr(info, "rank", None) or getattr(info, "taxon_rank", None)
    if rank is None and len(info.scientific_name.split()) == 2:
        rank = "species"  # a binomial
    if rank in TAXON_RANKS:
        entry["taxonRank"] = rank
    entry["vernacularNames"] = {"eng": info.common_name}
    return entry


def _read_rows(results_csv: Path) -> list[dict[str, str]]:
    from wildid.review import read_results

    frame = read_results(results_csv)
    return frame.astype(object).where(frame.notna(), "").astype(str).to_dict("records")


def _journal(results_csv: Path) -> dict[str, dict[str, str]]:
    from wildid.review import replay_journal

    latest = replay_journal(results_csv).latest
    return {str(row["path"]): {k: str(row[k]) for k in ("true_label", "reviewer", "reviewed_at")}
            for _, row in latest.iterrows()}


def _camera_folder(row: dict[str, str]) -> str:
    relative = PurePosixPath(row.get("relpath") or Path(row["path"]).name)
    return str(relative.parent) if str(relative.parent) != "." else ""


def export_camtrap_dp(results_csv: Path | str, out: Path | str, *, utc_offset: str | None = None,
                      title: str | None = None, contributor: str | None = None,
                      empty_threshold: float | None = None, overwrite: bool = False) -> CamtrapExport:
    """Write a Camtrap DP 1.0 package for ``results_csv`` into the folder ``out``."""
    results_csv = Path(results_csv).expanduser()
    out = Path(out).expanduser()
    offset = parse_offset(utc_offset) or timezone.utc
    every_row = _read_rows(results_csv)
    rows = [r for r in every_row if r["status"] != "error"]
    skipped_errors = len(every_row) - len(rows)
    if not rows:
        raise DataError(f"{results_csv.name}: no classified files to export (only errors, or empty)")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out} is not empty: choose a new folder, or add --overwrite")
    reviewed = _journal(results_csv)
    root = _batch_root(rows)
    batch_name = root.name if root else results_csv.stem
    to_fill: list[str] = []
    notes: list[str] = []

    # --- media ---------------------------------------------------------------------------------
    media, assumed_offset, no_time = [], 0, 0
    by_folder: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        stamp, assumed = _timestamp(row["datetime"], offset)
        assumed_offset += assumed
        no_time += stamp is None
        folder = _camera_folder(row)
        deployment = folder or batch_name
        relative = row.get("relpath") or Path(row["path"]).name
        item = {
            "mediaID": relative, "deploymentID": deployment, "captureMethod": "", "timestamp": _iso(stamp),
            "filePath": relative, "filePublic": "false", "fileName": PurePosixPath(relative).name,
            "fileMediatype": mimetypes.guess_type(relative)[0] or "image/jpeg",
            "exifData": "", "favorite": "", "mediaComments": "",
        }
        media.append(item)
        by_folder[deployment].append({"row": row, "stamp": stamp, "media": item})
    if no_time:
        to_fill.append(f"media.timestamp (and observations.eventStart / eventEnd): {no_time} file(s) have no EXIF "
                       "date/time")
    if assumed_offset:
        notes.append(f"{assumed_offset} EXIF time(s) had no UTC offset: written as "
                     f"{_iso(datetime(2000, 1, 1, tzinfo=offset))[19:] or 'Z'} (give --utc-offset for the cameras' clock)")

    # --- deployments -----------------------------------------------------------------------------
    deployments, no_coordinates, spatial_points = [], [], []
    for deployment, items in sorted(by_folder.items()):
        stamps = [i["stamp"] for i in items if i["stamp"] is not None]
        cameras = Counter(i["row"]["camera"] for i in items if i["row"]["camera"])
        gps = _folder_gps(i["row"]["path"] for i in items)
        if gps is None:
            no_coordinates.append(deployment)
        else:
            spatial_points.append([round(gps[1], 6), round(gps[0], 6)])
        deployments.append({
            "deploymentID": deployment, "locationID": "", "locationName": deployment,
            "latitude": "" if gps is None else round(gps[0], 6), "longitude": "" if gps is None else round(gps[1], 6),
            "coordinateUncertainty": "", "deploymentStart": _iso(min(stamps)) if stamps else "",
            "deploymentEnd": _iso(max(stamps)) if stamps else "", "setupBy": "", "cameraID": "",
            "cameraModel": cameras.most_common(1)[0][0] if cameras else "",
            **{k: "" for k in ("cameraDelay", "cameraHeight", "cameraDepth", "cameraTilt", "cameraHeading",
                               "detectionDistance", "timestampIssues", "baitUse", "featureType", "habitat",
                               "deploymentGroups", "deploymentTags", "deploymentComments")},
        })
        if not stamps:
            to_fill.append(f"deployments.deploymentStart / deploymentEnd of {deployment}: no EXIF times")
    if no_coordinates:
        to_fill.append(f"deployments.latitude / longitude (WGS84) of {', '.join(no_coordinates)}: no EXIF GPS")
        to_fill.append("datapackage.json spatial (GeoJSON of the deployments), once the coordinates are known")

    # --- observations ----------------------------------------------------------------------------
    observations: list[dict[str, Any]] = []
    taxa: dict[str, dict[str, Any]] = {}
    unmapped: Counter = Counter()
    for deployment, items in sorted(by_folder.items()):
        for item in items:
            for observation in _observations(item["row"], item["media"], reviewed.get(item["row"]["path"]),
                                             empty_threshold):
                label = observation.pop("_label", "")
                rolled = observation.pop("_taxon", None)
                if observation["observationType"] == "animal":
                    taxon = rolled or _taxon(label)
                    if taxon is None:
                        unmapped[label] += 1
                    else:
                        observation["scientificName"] = taxon["scientificName"]
                        taxa.setdefault(taxon["scientificName"], taxon)
                observation["observationID"] = f"{item['media']['mediaID']}#{len(observations) + 1}"
                observations.append(observation)
    if unmapped:
        names = ", ".join(f"{label!r} ({n})" for label, n in unmapped.most_common())
        to_fill.append(f"observations.scientificName of labels without a species_info entry: {names} "
                       "(the label is kept in observationTags)")

    # --- datapackage.json ------------------------------------------------------------------------
    stamps = [i["stamp"] for items in by_folder.values() for i in items if i["stamp"] is not None]
    models = sorted({r["model"] for r in rows if r.get("model")})
    package: dict[str, Any] = {
        "profile": PROFILE_URL,
        "name": _slug(title or batch_name),
        "created": _iso(datetime.now(timezone.utc).replace(microsecond=0)),
        "title": title or f"Camera-trap frames of {batch_name}, classified by wildid",
        "contributors": [{"title": contributor or "(fill in: who collected or published these data)",
                          "role": "contact"}],
        "sources": [{"title": "wildid", "version": ", ".join(models)}],
        "project": {"title": title or batch_name, "samplingDesign": "opportunistic",
                    "captureMethod": ["activityDetection"], "individualAnimals": False, "observationLevel": ["media"]},
        "temporal": {"start": min(stamps).date().isoformat(), "end": max(stamps).date().isoformat()} if stamps else {},
        "taxonomic": sorted(taxa.values(), key=lambda t: t["scientificName"]),
        "resources": [{"name": name, "path": f"{name}.csv", "profile": "tabular-data-resource", "format": "csv",
                       "mediatype": "text/csv", "encoding": "utf-8", "schema": f"{BASE_URL}/{name}-table-schema.json"}
                      for name in TABLES],
    }
    if spatial_points:
        package["spatial"] = ({"type": "Point", "coordinates": spatial_points[0]} if len(spatial_points) == 1
                              else {"type": "MultiPoint", "coordinates": spatial_points})
    if not stamps:
        to_fill.append("datapackage.json temporal (start and end dates of the deployments)")
    if not contributor:
        to_fill.append("datapackage.json contributors: the people or organisation behind the data")
    notes.append("datapackage.json project: samplingDesign 'opportunistic', captureMethod 'activityDetection' "
                 "and individualAnimals false were assumed; correct them if your study differs")
    notes.append(f"media.filePath is relative to the classified folder{f' {root}' if root else ''}: keep the "
                 "package beside the images or rewrite the paths; filePublic is false")
    if skipped_errors:
        notes.append(f"{skipped_errors} unreadable file(s) (error rows) are not in the package")

    _write_package(out, package, {"deployments": deployments, "media": media, "observations": observations})
    return CamtrapExport(out, {"deployments": len(deployments), "media": len(media), "observations": len(observations)},
                         to_fill, notes)


def _batch_root(rows: list[dict[str, str]]) -> Path | None:
    """The folder batch classified: a row's path without its relpath."""
    for row in rows:
        path, relative = Path(row["path"]), row.get("relpath") or ""
        if relative and path.as_posix().endswith(relative):
            return Path(path.as_posix()[: -len(relative)].rstrip("/") or "/")
    return None


def _folder_gps(paths: Iterable[str]) -> tuple[float, float] | None:
    """The median EXIF GPS fix of a camera folder's frames (a fixed camera: one place)."""
    import statistics

    from wildid.metadata import read_gps

    fixes = [fix for fix in (read_gps(p) for p in paths) if fix is not None]
    if not fixes:
        return None
    return statistics.median(f[0] for f in fixes), statistics.median(f[1] for f in fixes)


def _observations(row: dict[str, str], media: dict[str, Any], review: dict[str, str] | None,
                  empty_threshold: float | None) -> list[dict[str, Any]]:
    """The observations of one classified frame (see the module doc)."""
    base = {c: "" for c in table_fields("observations")}
    base.update(deploymentID=media["deploymentID"], mediaID=media["mediaID"], eventID=row.get("sequence_id", ""),
                eventStart=media["timestamp"], eventEnd=media["timestamp"], observationLevel="media")
    machine = {"classificationMethod": "machine",
               "classifiedBy": f"wildid {row.get('model', '')} {row.get('model_version', '')}".strip()}
    if review is not None:
        label = review["true_label"]
        count = int(float(row["detection_count"])) if row.get("detection_count") not in ("", None) else ""
        return [{**base, "observationType": _type_of(label), "_label": label,
                 "count": count if _type_of(label) == "animal" and count else "",
                 "classificationMethod": "human", "classifiedBy": review["reviewer"],
                 "classificationTimestamp": _reviewed_at(review["reviewed_at"]),
                 "observationTags": f"wildidLabel:{_tag(label)}",
                 "observationComments": f"model said {row['label']} ({row['confidence']})" if row["label"] else ""}]
    found = []
    for entry in md.row_detections(row):
        bbox = entry.get("bbox") or [0, 0, 0, 0]
        box = {"bboxX": bbox[0], "bboxY": bbox[1], "bboxWidth": bbox[2], "bboxHeight": bbox[3]}
        if entry.get("top_k"):
            accepted = row["status"] == "accepted"
            found.append({**base, **machine, **box, "observationType": "animal" if accepted else "unclassified",
                          "_label": entry["label"] if accepted else "", "count": 1,
                          "classificationProbability": entry["confidence"] if accepted else "",
                          "observationTags": f"wildidLabel:{_tag(entry['label'])}|detectorConf:{entry['conf']}",
                          "observationComments": "" if accepted else
                          f"below the accept threshold: {entry['label']} ({entry['confidence']})"})
        elif entry.get("kept"):
            kind = "human" if entry.get("category") == md.PERSON else "vehicle" if entry.get("category") == md.VEHICLE else "unknown"
            found.append({**base, **box, "observationType": kind, "classificationMethod": "machine",
                          "classifiedBy": "MegaDetector", "classificationProbability": entry["conf"]})
    if found:
        return found
    blank = row["status"] == "empty" or (empty_threshold is not None and row["empty_score"] not in ("", "nan")
                                         and float(row["empty_score"]) >= empty_threshold)
    if blank:
        return [{**base, "observationType": "blank", "classificationMethod": "machine",
                 "classifiedBy": "MegaDetector" if row["status"] == "empty" else "wildid empty_score",
                 "observationComments": row.get("error", "") if row["status"] == "empty" else
                 f"empty_score {row['empty_score']}"}]
    accepted = row["status"] == "accepted"
    box = md.parse_box(row.get("box")) if row.get("box_source") == md.SOURCE_DETECTOR else None
    boxed = {"bboxX": box[0], "bboxY": box[1], "bboxWidth": box[2], "bboxHeight": box[3]} if box else {}
    if not accepted and _rolled_up(row):
        # No class was sure, a higher taxon was (wildid.taxonomy): the answer is that taxon, at its rank.
        return [{**base, **machine, "observationType": "animal", "_label": "",
                 "_taxon": {"scientificName": row["taxon"], "taxonRank": row["rank"]}, "count": 1, **boxed,
                 "classificationProbability": row["taxon_confidence"],
                 "observationTags": f"wildidLabel:{_tag(row['label'])}|wildidRank:{row['rank']}",
                 "observationComments": f"no single class sure: answered at {row['rank']} level; "
                                        f"top class {row['label']} ({row['confidence']})"}]
    return [{**base, **machine, "observationType": "animal" if accepted else "unclassified",
             "_label": row["label"] if accepted else "", "count": 1 if accepted else "",
             **boxed,
             "classificationProbability": row["confidence"] if accepted else "",
             "observationTags": f"wildidLabel:{_tag(row['label'])}",
             "observationComments": "" if accepted else _unaccepted_comment(row)}]


def _rolled_up(row: dict) -> bool:
    """A review row whose answer is a taxon above species (the batch table's rank / taxon columns)."""
    return (row["status"] == "review" and bool(row.get("taxon")) and row.get("rank") in TAXON_RANKS
            and row.get("rank") not in ("species", "subspecies") and row.get("taxon_confidence") not in ("", None))


def _unaccepted_comment(row: dict) -> str:
    if row["status"] == "out_of_scope":  # wildid.scope: the model was not trained on images like this
        return f"out of scope for the model; its guess: {row['label']} ({row['confidence']})"
    return f"below the accept threshold: {row['label']} ({row['confidence']})"


def _type_of(label: str) -> str:
    key = species.normalize_label(label)
    if key in BLANK_LABELS:
        return "blank"
    if key in HUMAN_LABELS:
        return "human"
    if key in VEHICLE_LABELS:
        return "vehicle"
    return "animal"


def _tag(label: str) -> str:
    return label.replace("|", "/")


def _reviewed_at(text: str) -> str:
    try:
        value = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return ""
    return _iso(value if value.tzinfo else value.replace(tzinfo=timezone.utc))


def _write_package(out: Path, package: dict[str, Any], tables: dict[str, list[dict[str, Any]]]) -> None:
    """All files into a staging folder that then replaces ``out`` whole (wildid.staged): a kill
    leaves the previous package or the new one, never a mix.  Other files in ``out`` are kept."""
    with staged_folder(out) as staging:
        for name, rows in tables.items():
            with (staging / f"{name}.csv").open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=table_fields(name), extrasaction="raise")
                writer.writeheader()
                writer.writerows(rows)
        (staging / "datapackage.json").write_text(json.dumps(package, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")


def export_zip(results_csv: Path | str, **options) -> tuple[bytes, CamtrapExport]:
    """The package as zip bytes (for a download button) and its summary."""
    with tempfile.TemporaryDirectory(prefix="wildid-camtrap-") as tmp:
        summary = export_camtrap_dp(results_csv, Path(tmp) / "camtrap-dp", **options)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(summary.out.iterdir()):
                archive.write(path, path.name)
    return buffer.getvalue(), summary


def validate_package(folder: Path | str) -> list[str]:
    """Problems of a written package (empty list = valid): datapackage.json against the Camtrap
    DP 1.0 profile and each table against its schema (types, required, enumerations, keys),
    with the ``frictionless`` library and the schemas in wildid/camtrap_schemas/."""
    import jsonschema
    from frictionless import Package, Resource, Schema

    folder = Path(folder)
    descriptor = json.loads((folder / "datapackage.json").read_text(encoding="utf-8"))
    profile = json.loads((SCHEMA_DIR / "camtrap-dp-profile.json").read_text(encoding="utf-8"))
    problems = [f"datapackage.json: {'/'.join(map(str, e.path)) or '(top)'}: {e.message}"
                for e in jsonschema.Draft7Validator(profile).iter_errors(descriptor)]
    # Schemas as dicts: frictionless refuses absolute schema paths as "not safe".
    resources = [Resource(path=f"{name}.csv", name=name, basepath=str(folder), schema=Schema.from_descriptor(
        json.loads((SCHEMA_DIR / f"{name}-table-schema.json").read_text(encoding="utf-8"))))
        for name in TABLES]
    report = Package(resources=resources, basepath=str(folder)).validate()
    for error in report.errors:
        problems.append(f"package: {error.message}")
    for task in report.tasks:
        for error in task.errors:
            problems.append(f"{task.name}: {error.message}")
    return problems
