"""EXIF date/time, camera and sequences (wildid.metadata)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from PIL import Image

from wildid.metadata import assign_sequences, parse_exif_datetime, read_metadata


def exif_jpeg(path, stamp: str | None = None, make: str = "", model: str = "", orientation: int | None = None,
              size=(40, 30), offset: str | None = None, base_only: bool = False):
    exif = Image.Exif()
    if make:
        exif[271] = make
    if model:
        exif[272] = model
    if orientation:
        exif[274] = orientation
    if stamp and base_only:
        exif[306] = stamp
    elif stamp:
        exif.get_ifd(0x8769)[36867] = stamp
        if offset:
            exif.get_ifd(0x8769)[36881] = offset
    Image.new("RGB", size, (90, 90, 90)).save(path, exif=exif)
    return path


def test_parse_exif_datetime_variants():
    assert parse_exif_datetime("2024:01:31 23:59:58") == datetime(2024, 1, 31, 23, 59, 58)
    assert parse_exif_datetime(b"2024-01-31 23:59:58\x00") == datetime(2024, 1, 31, 23, 59, 58)
    assert parse_exif_datetime("2024:01:31 23:59:58", "-05:00").utcoffset() == timedelta(hours=-5)
    assert parse_exif_datetime("0000:00:00 00:00:00") is None
    assert parse_exif_datetime("garbage") is None
    assert parse_exif_datetime(None) is None
    assert parse_exif_datetime(12345) is None


def test_read_metadata_from_pil_exif(tmp_path):
    meta = read_metadata(exif_jpeg(tmp_path / "a.jpg", "2023:12:24 18:30:00", "RECONYX", "HyperFire 2", offset="+01:00"))
    assert meta.datetime == datetime(2023, 12, 24, 18, 30, 0, tzinfo=timezone(timedelta(hours=1)))
    assert meta.iso_datetime == "2023-12-24T18:30:00+01:00"
    assert meta.camera == "RECONYX HyperFire 2"
    assert (meta.width, meta.height) == (40, 30)


def test_read_metadata_base_ifd_datetime_model_only_and_rotation(tmp_path):
    meta = read_metadata(exif_jpeg(tmp_path / "b.jpg", "2022:06:01 05:00:01", model="Browning BTC-8E",
                                   orientation=6, base_only=True))
    assert meta.datetime == datetime(2022, 6, 1, 5, 0, 1)
    assert meta.camera == "Browning BTC-8E"
    assert (meta.width, meta.height) == (30, 40)  # orientation 6: upright size is rotated


def test_make_already_in_model_is_not_repeated(tmp_path):
    assert read_metadata(exif_jpeg(tmp_path / "c.jpg", make="Canon", model="Canon EOS R5")).camera == "Canon EOS R5"


def test_read_metadata_of_bad_files_is_empty(tmp_path):
    (tmp_path / "x.txt").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("x.txt", "empty.jpg", "missing.jpg"):
        meta = read_metadata(tmp_path / name)
        assert meta.datetime is None and meta.camera == "" and meta.width is None
    plain = tmp_path / "plain.png"
    Image.new("RGB", (7, 5)).save(plain)
    assert read_metadata(plain).datetime is None
    assert (read_metadata(plain).width, read_metadata(plain).height) == (7, 5)


def test_png_exif_before_the_pixels_is_read_without_decoding(tmp_path, monkeypatch):
    exif = Image.Exif()
    exif[272] = "PNG Cam"
    exif.get_ifd(0x8769)[36867] = "2024:01:02 03:04:05"
    tagged, plain = tmp_path / "tagged.png", tmp_path / "plain.png"
    Image.new("RGB", (30, 20)).save(tagged, exif=exif)  # PIL writes eXIf before IDAT
    Image.new("RGB", (30, 20)).save(plain)

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("read_metadata decoded pixels")

    from PIL import PngImagePlugin

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    meta = read_metadata(tagged)
    assert (meta.camera, meta.datetime, meta.width, meta.height) == ("PNG Cam", datetime(2024, 1, 2, 3, 4, 5), 30, 20)
    meta = read_metadata(plain)
    assert (meta.camera, meta.datetime, meta.width, meta.height) == ("", None, 30, 20)


def test_assign_sequences_splits_on_gap_in_time_order():
    t0 = datetime(2024, 3, 1, 12, 0, 0)
    frames = [  # given out of time order on purpose
        ("c", t0 + timedelta(seconds=65)),
        ("a", t0),
        ("b", t0 + timedelta(seconds=30)),
        ("d", t0 + timedelta(seconds=200)),
        ("e", t0 + timedelta(seconds=255)),
        ("x", None),
    ]
    ids = assign_sequences(frames, gap_seconds=60, prefix="cam1")
    assert ids["a"] == ids["b"] == ids["c"] == "cam1#0001"  # 30 s and 35 s gaps
    assert ids["d"] == ids["e"] == "cam1#0002"  # 135 s gap, then 55 s
    assert ids["x"] == "cam1#0003"  # no timestamp: a sequence of its own
    assert assign_sequences(frames, gap_seconds=60, prefix="cam1") == ids  # deterministic
    assert len(set(assign_sequences(frames, gap_seconds=10).values())) == 6
    assert set(assign_sequences(frames, gap_seconds=1000).values()) == {"#0001", "#0002"}
