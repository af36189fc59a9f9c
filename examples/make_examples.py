"""Rebuild the bundled example photos (run once; the outputs are committed).

    .venv/bin/python examples/make_examples.py

- chelsea_cat.jpg: scikit-image's sample photo of Chelsea the cat (public domain, ships
  with the scikit-image package).
- night_frame_nir.tif: the same photo as a dark 16-bit greyscale TIFF, standing in for a
  near-infrared camera-trap frame at night (try the CLAHE enhancement on it).
- snow_track.png: a drawn cat-family footprint (four toes, no claw marks, a lobed pad) in snow.
- chelsea_cat_close_up.png: a 100x100 crop of the cat photo (striped fur only); no single
  class of the general model is sure of it, and the answer rolls up to a higher taxon.

Not made here, copied unchanged: track_photo_felid.jpg, a real cat-family footprint in snow
from the *test* split of shared/data/tracks-families (felid/test_large23_jpg.rf.15f17c...jpg, never
used to train or calibrate models/tracks-families). Source: research-grade observations of the
iNaturalist project "North American Animal Tracks Database", assembled as the Roboflow Universe
project "animal-track-ftvw2" v1 (St. Mary's College of Maryland), as committed in
github.com/PallaviPuligilla/Animal-Footprint-Classifier at 9d4fdc623199a4d7826a7bee7d14d3c6cd92f26d;
CC BY 4.0 (the iNaturalist photo carries its own Creative Commons licence).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent


def chelsea() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.chelsea())


def night_frame(cat: Image.Image) -> Image.Image:
    grey = np.asarray(cat.convert("L").resize((300, 200), Image.BILINEAR), dtype=np.float64)
    rng = np.random.default_rng(7)
    # A dim frame: the sensor uses a sliver of its 16-bit range, with read noise.
    dark = 1200.0 + grey * 9.0 + rng.normal(0, 60.0, grey.shape)
    return Image.fromarray(np.clip(dark, 0, 65535).astype(np.uint16))


def snow_track() -> Image.Image:
    rng = np.random.default_rng(3)
    width, height = 320, 240
    snow = np.clip(rng.normal(228, 8, (height, width)), 0, 255).astype(np.uint8)
    img = Image.fromarray(snow).convert("RGB")
    draw = ImageDraw.Draw(img)
    shade = (150, 158, 170)
    # Metacarpal pad: three lobes at the back, wider than long (felid).
    draw.ellipse((118, 118, 202, 186), fill=shade)
    for x in (126, 150, 174):
        draw.ellipse((x, 160, x + 22, 192), fill=shade)
    # Four teardrop toes in an arc, no claw marks.
    for cx, cy in ((108, 100), (140, 70), (180, 70), (212, 100)):
        draw.ellipse((cx - 15, cy - 19, cx + 15, cy + 19), fill=shade)
    return img.filter(ImageFilter.GaussianBlur(2.2))


def main() -> None:
    cat = chelsea()
    cat.save(HERE / "chelsea_cat.jpg", quality=88)
    night_frame(cat).save(HERE / "night_frame_nir.tif", compression="tiff_adobe_deflate")
    snow_track().save(HERE / "snow_track.png", optimize=True)
    cat.crop((150, 150, 250, 250)).save(HERE / "chelsea_cat_close_up.png", optimize=True)
    for path in sorted(HERE.glob("*.*")):
        if path.suffix != ".py":
            print(f"{path.name}: {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
