"""Peak server memory for one uploaded image, per format, at a given pixel count.

    .venv/bin/python bench/upload_memory.py                      # every format at the upload pixel cap, plus 12000x12000
    .venv/bin/python bench/upload_memory.py --megapixels 64 144  # chosen sizes
    .venv/bin/python bench/upload_memory.py --page               # also the whole Identify page (AppTest)

Each case runs in a fresh Python process, which decodes the upload's bytes with
``wildid.imaging.load_image`` (what the Identify, Re-ID and Batch pages call) and prints the growth
of its peak resident memory: the peak mark (VmHWM) is reset to the current RSS just before the
call (/proc/self/clear_refs), and the growth is VmHWM after minus VmRSS before.  (ru_maxrss would
carry the parent's peak over fork + exec.)  Files are flat-coloured, so even
the largest compress far under the 50 MB upload limit: the decoded size, not the file size, is
what an attacker controls.  ``--page`` runs the Identify page of the app on the upload (decode,
display copy, prediction with the bundled model) and reports its peak growth over the same page
with a 640x480 JPEG; that is the figure the pixel cap in ``wildid.imaging`` is chosen from.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FORMATS = {
    "PNG RGBA 8-bit": ("RGBA", "PNG", {}),
    "PNG RGB 8-bit": ("RGB", "PNG", {}),
    "PNG grey 16-bit": ("I;16", "PNG", {}),
    "PNG palette + transparency": ("P", "PNG", {"transparency": 0}),
    "TIFF float32": ("F", "TIFF", {"compression": "tiff_deflate"}),
    "TIFF RGBA": ("RGBA", "TIFF", {"compression": "tiff_deflate"}),
    "JPEG RGB (full decode)": ("RGB", "JPEG", {"quality": 50}),
    "JPEG CMYK (full decode)": ("CMYK", "JPEG", {"quality": 50}),
    "WebP RGBA": ("RGBA", "WEBP", {"lossless": True}),
}

MEMORY = """
def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0
def reset_peak():
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
"""

DECODE = MEMORY + """
import sys
sys.path.insert(0, {root!r})
from wildid.imaging import load_image
from wildid.errors import WildidError
data = open(sys.argv[1], 'rb').read()
reset_peak()
before = status_kb("VmRSS")
try:
    image = load_image(data)
    outcome = 'decoded %dx%d' % image.size
except WildidError as exc:
    outcome = 'refused'
after = status_kb("VmHWM")
print((after - before) // 1024, outcome)
"""

PAGE = MEMORY + """
import sys
sys.path.insert(0, {root!r})
from streamlit.testing.v1 import AppTest
def run(name, data):
    at = AppTest.from_file({page!r}, default_timeout=600)
    at.run()
    at.file_uploader(key="identify_upload").set_value((name, data, "image/png")).run()
    return at
small = open(sys.argv[2], 'rb').read()
at = run("small.jpg", small)
assert not at.exception and not at.error, [e.value for e in at.error]
data = open(sys.argv[1], 'rb').read()
reset_peak()
before = status_kb("VmRSS")
at = run(sys.argv[1], data)
after = status_kb("VmHWM")
outcome = 'refused' if at.error else ('exception' if at.exception else 'shown')
print((after - before) // 1024, outcome, before // 1024)
"""


def make_file(kind: str, side: tuple[int, int], folder: Path) -> Path:
    from PIL import Image

    mode, fmt, options = FORMATS[kind]
    if mode == "I;16":
        image = Image.new("I;16", side, 20000)
    elif mode == "F":
        image = Image.new("F", side, 0.25)
    elif mode == "P":
        image = Image.new("P", side, 1)
        image.putpalette([0, 0, 0, 40, 90, 30] + [0] * 762)
    elif mode == "CMYK":
        image = Image.new("CMYK", side, (20, 60, 10, 30))
    else:
        image = Image.new(mode, side, (40, 90, 30, 200)[: len(mode)])
    path = folder / f"{kind.split()[0].lower()}-{side[0]}x{side[1]}-{abs(hash(kind)) % 10**6}.{fmt.lower()}"
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    path.write_bytes(buffer.getvalue())
    return path


def side_for(megapixels: float, aspect: float = 1.0) -> tuple[int, int]:
    width = int((megapixels * 1e6 * aspect) ** 0.5)
    return width, int(megapixels * 1e6 // width)


def main() -> None:
    from wildid.imaging import MAX_PIXELS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megapixels", type=float, nargs="+", default=None)
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS), metavar="FORMAT")
    parser.add_argument("--page", action="store_true", help="also run the Identify page on the worst case")
    args = parser.parse_args()
    import tempfile

    sizes = [side_for(mp) for mp in args.megapixels] if args.megapixels else [side_for(MAX_PIXELS / 1e6 - 0.01), (12000, 12000)]
    print(f"pixel cap in this tree: {MAX_PIXELS / 1e6:.0f} MP; peak RSS growth per decode (fresh process each)")
    print(f"{'format':30s} {'size':>12s} {'file KB':>8s} {'peak MB':>8s} {'B/pixel':>8s}  outcome")
    worst = (0, None)
    with tempfile.TemporaryDirectory() as tmp:
        for side in sizes:
            for kind in args.formats:
                path = make_file(kind, side, Path(tmp))
                proc = subprocess.run([sys.executable, "-c", DECODE.format(root=str(ROOT)), str(path)],
                                      capture_output=True, text=True, timeout=900)
                if proc.returncode:
                    print(f"{kind:30s} failed: {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                grown, outcome = proc.stdout.split(" ", 1)
                per_pixel = int(grown) * 2**20 / (side[0] * side[1])
                print(f"{kind:30s} {side[0]}x{side[1]:<6d} {path.stat().st_size // 1024:8d} {int(grown):8d} "
                      f"{per_pixel:8.1f}  {outcome.strip()}")
                if outcome.startswith("decoded") and int(grown) > worst[0]:
                    worst = (int(grown), (kind, side))
                path.unlink()
        if args.page and worst[1] is not None:
            kind, side = worst[1]
            path = make_file(kind, side, Path(tmp))
            small = Path(tmp) / "small.jpg"
            from PIL import Image

            Image.new("RGB", (640, 480), (90, 120, 60)).save(small, quality=90)
            page = str(ROOT / "app_pages" / "identify.py")
            proc = subprocess.run([sys.executable, "-c", PAGE.format(root=str(ROOT), page=page), str(path), str(small)],
                                  capture_output=True, text=True, timeout=1800, cwd=ROOT)
            if proc.returncode:
                print("page run failed:", proc.stderr.strip().splitlines()[-3:])
            else:
                grown, outcome, base = proc.stdout.split()
                print(f"Identify page, {kind} {side[0]}x{side[1]}: peak RSS {int(base) + int(grown)} MB, "
                      f"+{grown} MB over the same page with a 640x480 JPEG ({base} MB); {outcome}")


if __name__ == "__main__":
    main()
