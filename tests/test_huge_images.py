"""Huge images (scans, posters) over the default pixel limit: refused by default, accepted with a larger
``max_pixels`` (``--max-megapixels``), decoded reduced with bounded memory (measured in a child
process: peak RSS), and ``imgrag eval`` leaves unreadable images out, says which, and goes on.

Figures for the README come from ``python tests/test_huge_images.py W H`` (a W×H PNG and JPEG).
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgrag.retrieval.imageio import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from imgrag.retrieval.reduced import REDUCED_MAX_PIXELS, reduction_factor

TESTS = Path(__file__).resolve().parent
BLOCK = 1000  # the test pattern is constant in BLOCK × BLOCK squares


def colour(bx: np.ndarray, by: int) -> np.ndarray:
    return np.stack([(bx * 37) % 256, np.full_like(bx, (by * 53) % 256), (bx * 11 + by * 29) % 256], -1)


def write_huge_png(path: Path, w: int, h: int) -> None:
    """A w×h RGB PNG written row by row (never the whole image in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(6)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        bx = np.arange(w) // BLOCK
        for y in range(h):
            if y % BLOCK == 0:
                row = b"\x00" + colour(bx, y // BLOCK).astype(np.uint8).tobytes()
            out = z.compress(row)
            if out:
                f.write(chunk(b"IDAT", out))
        f.write(chunk(b"IDAT", z.flush()) + chunk(b"IEND", b""))


def write_huge_jpeg(path: Path, w: int, h: int) -> None:
    """A w×h greyscale JPEG (Pillow's encoder needs the whole image: w × h bytes here)."""
    img = Image.new("L", (w, h))
    for by in range(-(-h // BLOCK)):
        for bx in range(-(-w // BLOCK)):
            img.paste((bx * 37 + by * 53) % 256, (bx * BLOCK, by * BLOCK, (bx + 1) * BLOCK, (by + 1) * BLOCK))
    img.save(path, "JPEG", quality=90)


PEAK = """
import resource, sys, time
from pathlib import Path
from PIL import Image
from imgrag.retrieval.imageio import decode_image
def hwm():  # peak RSS (KiB) since the last reset
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
data = Path(sys.argv[1]).read_bytes()
base = hwm()
try:  # reset the peak (import-time peaks must not hide the decode's)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
except OSError:
    pass
t = time.perf_counter()
if sys.argv[2] == "pillow-full":
    Image.MAX_IMAGE_PIXELS = None
    import io
    im = Image.open(io.BytesIO(data)); im.load(); size = im.size
else:
    size = decode_image(data, max_pixels=int(float(sys.argv[2]) * 1e6)).image.size
peak = hwm()
print(base, peak, size[0], size[1], round(time.perf_counter() - t, 2), len(data))
"""


def measure(path: Path, how: str) -> dict:
    """Peak RSS (MiB) above the RSS after reading the file, in a fresh child process (Linux /proc)."""
    out = subprocess.run([sys.executable, "-c", PEAK, str(path), how], capture_output=True, text=True, check=True)
    base, peak, w, h, secs, n = out.stdout.split()
    return {"extra_mib": (int(peak) - int(base)) / 1024, "size": (int(w), int(h)), "s": float(secs),
            "file_mib": int(n) / 2**20}


# ------------------------------------------------------------------------------------------------
# huge PNG / JPEG: 12,000 × 16,000 = 192 MP, just over the default 179 MP limit
# ------------------------------------------------------------------------------------------------
W, H = 12_000, 16_000


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("huge") / "poster.png"
    write_huge_png(p, W, H)
    return p


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("huge") / "scan.jpg"
    write_huge_jpeg(p, W, H)
    return p


@pytest.mark.slow
def test_huge_png_refused_by_default_and_decoded_reduced_in_bounded_memory(huge_png):
    with pytest.raises(ImageDecodeError, match=r"image too large: (12000x16000 \()?192 MP > 179 MP limit"):
        decode_image(huge_png.read_bytes())
    d = decode_image(huge_png.read_bytes(), max_pixels=200_000_000)
    f = reduction_factor(W, H)
    assert (d.width, d.height) == (W, H)  # metadata is the full size
    assert d.image.size == (-(-W // f), -(-H // f)) and d.image.size[0] * d.image.size[1] <= REDUCED_MAX_PIXELS
    arr = np.asarray(d.image)
    for bx, by in [(0, 0), (3, 7), (11, 15), (6, 2)]:  # the centre of each pattern block, reduced
        cx, cy = (bx * BLOCK + BLOCK // 2) // f, (by * BLOCK + BLOCK // 2) // f
        assert tuple(arr[cy, cx]) == tuple(colour(np.array([bx]), by)[0]), (bx, by)
    m = measure(huge_png, "200")
    raw = W * H * 3 / 2**20  # 549 MiB of RGB pixels
    print(f"\nhuge PNG {W}x{H}: reduced decode peak +{m['extra_mib']:.0f} MiB (raw pixels {raw:.0f} MiB)")
    assert m["extra_mib"] < 200  # strips + the ≤16 MP result, far below the 549 MiB of pixels


@pytest.mark.slow
def test_huge_jpeg_decoded_at_dct_scale(huge_jpeg):
    with pytest.raises(ImageDecodeError, match="image too large"):
        decode_image(huge_jpeg.read_bytes())
    d = decode_image(huge_jpeg.read_bytes(), max_pixels=200_000_000)
    assert (d.width, d.height) == (W, H)
    assert d.image.size[0] * d.image.size[1] <= REDUCED_MAX_PIXELS
    m = measure(huge_jpeg, "200")
    print(f"\nhuge JPEG {W}x{H}: DCT-scaled decode peak +{m['extra_mib']:.0f} MiB (raw pixels {W * H / 2**20:.0f} MiB)")
    assert m["extra_mib"] < 100  # 1/8 scale: 3 MP


def test_corrupt_strip_of_huge_png_is_refused(tmp_path, monkeypatch):
    """The strip decoder is as strict as the full decode: truncation and corrupt data are refused."""
    from imgrag.retrieval import imageio, reduced

    monkeypatch.setattr(imageio, "REDUCE_ABOVE_PIXELS", 100_000)  # a small image takes the huge path
    monkeypatch.setattr(reduced, "STRIP_BYTES", 20_000)
    p = tmp_path / "p.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (500, 400, 3), dtype=np.uint8)).save(p)
    data = p.read_bytes()
    full = Image.open(io.BytesIO(data)).convert("RGB")
    f = reduction_factor(400, 500, reduced.REDUCED_MAX_PIXELS)
    assert np.array_equal(np.asarray(decode_image(data).image), np.asarray(full.reduce(f) if f > 1 else full))
    with pytest.raises(ImageDecodeError, match="truncated PNG"):
        decode_image(data[: len(data) * 2 // 3])
    bad = bytearray(data)
    bad[len(data) // 2] ^= 0x40
    with pytest.raises(ImageDecodeError, match=r"^(corrupt|truncated) PNG"):
        decode_image(bytes(bad))


# ------------------------------------------------------------------------------------------------
# eval skips unreadable images, reports them, goes on
# ------------------------------------------------------------------------------------------------
def _eval_tree(root: Path) -> dict[str, str]:
    for cls, rgb in {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}.items():
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), tuple(max(0, c - 10 * i) for c in rgb)).save(root / cls / f"{i}.png")
    good = io.BytesIO()
    Image.new("RGB", (60, 60), (200, 0, 0)).save(good, "PNG")
    (root / "red" / "cut.png").write_bytes(good.getvalue()[:60])
    (root / "blue" / "notes.jpg").write_text("not a picture\n")
    return {str(root / "red" / "cut.png"): "truncated PNG", str(root / "blue" / "notes.jpg"): "not an image (text file)"}


def test_eval_zeroshot_skips_unreadable_images_and_says_which(tmp_path, monkeypatch, capsys):
    from fakes import FakeEmbedder

    from imgrag.retrieval import embedders
    from imgrag.retrieval.queries import evaluate

    bad = _eval_tree(tmp_path)
    run = evaluate.eval_zeroshot(FakeEmbedder(), tmp_path, ["none"])
    assert run.images == 9 and dict(run.skipped) == bad
    assert run.reports[0].top1 == 1.0

    monkeypatch.setattr(embedders, "load_embedder", lambda *a, **k: FakeEmbedder())
    args = Namespace(model="fake", device="cpu", precision="fp32", batch_size=4, eval_kind="zeroshot",
                     dir=str(tmp_path), templates=["none"], depth=1, limit_per_class=None, json=True,
                     max_megapixels=None)
    assert evaluate.run_cli(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 9 and out["skipped"] == 2
    assert {u["path"]: u["reason"] for u in out["unreadable"]} == bad
    args.json = False
    assert evaluate.run_cli(args) == 0
    text = capsys.readouterr().out
    assert "skipped 2 unreadable images (not evaluated):" in text
    assert all(f"{p}: {r}" in text for p, r in bad.items())


def test_eval_retrieval_leaves_out_unreadable_images_and_their_captions(tmp_path):
    from fakes import FakeEmbedder

    from imgrag.retrieval.queries.evaluate import eval_retrieval

    bad = _eval_tree(tmp_path)
    caps = tmp_path / "caps.tsv"
    caps.write_text("red/0.png\tred\ngreen/0.png\tgreen\nred/cut.png\tred too\nblue/notes.jpg\tblue\n")
    r = eval_retrieval(FakeEmbedder(), tmp_path, caps)
    assert (r.images, r.captions) == (2, 2) and dict(r.skipped) == bad


def test_eval_max_megapixels_admits_a_huge_image(tmp_path, monkeypatch):
    """Over the default limit: skipped with the reason; with max_pixels above it: evaluated."""
    from fakes import FakeEmbedder

    from imgrag.retrieval import imageio
    from imgrag.retrieval.queries.evaluate import eval_zeroshot

    monkeypatch.setattr(imageio, "DEFAULT_MAX_PIXELS", 1_000)  # 20×20 fine, 60×60 "huge"
    _eval_tree(tmp_path)
    (tmp_path / "red" / "cut.png").unlink()
    (tmp_path / "blue" / "notes.jpg").unlink()
    Image.new("RGB", (60, 60), (20, 20, 200)).save(tmp_path / "blue" / "big.png")
    run = eval_zeroshot(FakeEmbedder(), tmp_path, ["none"])
    assert run.images == 9 and run.skipped[0][1].startswith("image too large: 60x60")
    run = eval_zeroshot(FakeEmbedder(), tmp_path, ["none"], max_pixels=10_000)
    assert run.images == 10 and not run.skipped


# ------------------------------------------------------------------------------------------------
# CLI: --max-megapixels for index, eval and serve (uploads)
# ------------------------------------------------------------------------------------------------
def test_cli_max_megapixels(tmp_path, tiny_model_configs, capsys):
    from imgrag.app.cli import main
    from imgrag.app.cli.parser import build_parser
    from imgrag.retrieval.index import Index

    coll = tmp_path / "coll"
    for cls in ("a", "b"):
        (coll / cls).mkdir(parents=True)
        Image.new("RGB", (100, 100), (200, 30, 30) if cls == "a" else (30, 30, 200)).save(coll / cls / "small.png")
    Image.new("RGB", (300, 300), (30, 200, 30)).save(coll / "b" / "big.png")  # 0.09 MP
    idx = tmp_path / "idx"
    base = ["--index", str(idx), "--model", "imgrag-tiny-clip", "--workers", "0"]

    # invalid values are refused by the parser, before anything is created
    for bad in ("0", "-5", "nan", "lots"):
        with pytest.raises(SystemExit) as ei:
            main(["index", str(coll), *base, "--max-megapixels", bad])
        assert ei.value.code == 2 and not idx.exists()
    capsys.readouterr()

    assert main(["index", str(coll), *base, "--max-megapixels", "0.05", "--json"]) == 0
    capsys.readouterr()
    index = Index.open(idx)
    assert index.store.count() == 2
    skips = {Path(s["path"]).name: s["reason"] for s in index.skipped()}
    assert list(skips) == ["big.png"] and skips["big.png"].startswith("image too large: 300x300")
    assert main(["index", str(coll), *base, "--max-megapixels", "1", "--retry-skipped", "--json"]) == 0
    capsys.readouterr()
    assert Index.open(idx).store.count() == 3 and not Index.open(idx).skipped()

    assert main(["eval", "zeroshot", str(coll), "--model", "imgrag-tiny-clip", "--templates", "none",
                 "--max-megapixels", "0.05", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 2 and out["skipped"] == 1 and out["unreadable"][0]["path"].endswith("big.png")
    assert main(["eval", "zeroshot", str(coll), "--model", "imgrag-tiny-clip", "--templates", "none", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 0

    p = build_parser()
    if any(a.dest == "command" and "serve" in (a.choices or {}) for a in p._actions):
        assert p.parse_args(["serve", "--max-megapixels", "400"]).max_upload_mp == 400
        assert p.parse_args(["serve"]).max_upload_mp == 50


if __name__ == "__main__":  # figures: python tests/test_huge_images.py 21000 30000
    import tempfile

    w, h = int(sys.argv[1]), int(sys.argv[2])
    with tempfile.TemporaryDirectory() as d:
        for name, write in [(n, f) for n, f in (("png", write_huge_png), ("jpg", write_huge_jpeg))
                            if len(sys.argv) < 4 or n in sys.argv[3:]]:
            p = Path(d) / f"huge.{name}"
            write(p, w, h)
            mp = w * h / 1e6 + 1
            for how in (str(mp), "pillow-full"):
                print(name, how, json.dumps(measure(p, how)), flush=True)
            p.unlink()
