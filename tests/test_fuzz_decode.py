"""Differential fuzzing of strict decoding: seeded mutants of valid JPEG, PNG, WebP, GIF, TIFF and BMP
files go through the real decode worker code (and, for a subset, a real ``build_index`` into LanceDB).

For each mutant, exactly one of:

- skipped, with a specific reason (names the file problem; no traceback, no "unexpected error"), or
- accepted, and Pillow's strict decode (``Image.open(f); im.load()`` on the first frame with
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` off) succeeds and gives the same model input (and, through the
  index, the same stored vector) as what was indexed.

Anything else is "silently wrong" and must be 0. The reference shares only the colour conversion and
EXIF orientation with the indexer (:func:`imgrag.retrieval.pixels.to_rgb`, tested in test_imageio.py):
the decode itself is a fresh, independent Pillow decode of the mutant's bytes.
"""

from __future__ import annotations

import io
import random
import re
import struct
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from imgrag.indexer.decode import DecodeDataset, bound_aspect
from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.indexer.scan import FileEntry
from imgrag.retrieval.imageio import _apply_orientation, _orientation, _read_exif
from imgrag.retrieval.index import Index
from imgrag.retrieval.pixels import to_rgb

from reliability import all_rows

SEED = 20240614
PER_FORMAT = 80  # mutants per source file
DRAFT = 32  # tiny_clip's input size: the big JPEG source is decoded at a DCT scale (1/4)
EXT = {"JPEG": "jpg", "JPEG-draft": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "TIFF": "tif", "BMP": "bmp"}

#: what every skip reason from a decode starts with: it names the problem with the file
SPECIFIC = re.compile(r"^(truncated( or corrupt)? (JPEG|PNG|WEBP|GIF|TIFF|BMP|MPO|image)\b|corrupt (JPEG|PNG|WEBP|GIF|TIFF|BMP|MPO|image)\b"
                      r"|unreadable image header \(|not an image \(|image too large|invalid image size"
                      r"|unsupported colour mode|zero-byte file)")


def _picture(w: int, h: int) -> Image.Image:
    """Smooth gradients plus blocks: compresses like a photo, and a blank decode is far from it."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x // 8 + y // 8) % 2) * 200 + 20], -1)
    return Image.fromarray(arr.astype(np.uint8))


def sources() -> dict[str, bytes]:
    out = {}
    for name, fmt, img, kw in [
        ("JPEG", "JPEG", _picture(48, 40), {"quality": 90}),
        ("JPEG-draft", "JPEG", _picture(256, 192), {"quality": 85}),
        ("PNG", "PNG", _picture(48, 40), {}),
        ("WEBP", "WEBP", _picture(48, 40), {"quality": 80}),
        ("GIF", "GIF", _picture(48, 40).convert("P", palette=Image.Palette.ADAPTIVE, colors=64), {}),
        ("TIFF", "TIFF", _picture(48, 40), {"compression": "tiff_deflate"}),
        ("BMP", "BMP", _picture(48, 40), {}),
    ]:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        out[name] = buf.getvalue()
    return out


def data_start(name: str, data: bytes) -> int:
    """Offset of the compressed pixel data (mutations aim there; headers get a share too)."""
    if name.startswith("JPEG"):
        return data.index(b"\xff\xda") + 2
    if name == "PNG":
        return data.index(b"IDAT") + 4
    if name == "WEBP":
        return 30
    if name == "BMP":
        return struct.unpack("<I", data[10:14])[0]
    if name == "GIF":
        return data.index(b"\x2c", 13 + 3 * 64)  # image descriptor after the global palette
    return 8  # TIFF: Pillow writes the strips right after the header


def mutants(name: str, data: bytes, n: int, rng: random.Random):
    """(kind, bytes): byte flips in the data, truncations at many offsets, a few inserts/deletes."""
    start = data_start(name, data)
    cuts = sorted(rng.sample(range(1, len(data)), min(n // 4, len(data) - 1)))
    for i in range(n):
        b = bytearray(data)
        if i < len(cuts):
            yield "truncate", bytes(b[:cuts[i]])
            continue
        kind = rng.choices(["flip", "flip-header", "insert", "delete"], [70, 10, 10, 10])[0]
        if kind == "flip":
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(start, len(b))] ^= 1 << rng.randrange(8)
        elif kind == "flip-header":
            b[rng.randrange(0, start)] ^= 1 << rng.randrange(8)
        elif kind == "insert":
            p = rng.randrange(start, len(b))
            b[p:p] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 3)))
        else:
            p = rng.randrange(start, len(b) - 1)
            del b[p:p + rng.randint(1, 3)]
        yield kind, bytes(b)


def strict_reference(data: bytes, draft: int | None) -> Image.Image | Exception:
    """Pillow's strict decode of the first frame, upright RGB; the exception if it refuses."""
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            full = Image.open(io.BytesIO(data))
            full.load()  # the full-scale strict decode must succeed, drafted or not
            if draft and im.format == "JPEG":
                im.draft("RGB", (draft, draft))
            im.load()
            rgb = to_rgb(im)
            o = _orientation(_read_exif(im))
        return _apply_orientation(rgb, o) if o != 1 else rgb
    except Exception as e:  # noqa: BLE001 - any refusal counts as "strict decode fails"
        return e


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, list[tuple[str, Path, bytes]]]:
    root = tmp_path_factory.mktemp("fuzz")
    rng = random.Random(SEED)
    out: dict[str, list] = {}
    for name, data in sources().items():
        d = root / name
        d.mkdir()
        out[name] = []
        for i, (kind, b) in enumerate(mutants(name, data, PER_FORMAT, rng)):
            p = d / f"m{i:03d}_{kind}.{EXT[name]}"
            p.write_bytes(b)
            out[name].append((kind, p, b))
    return out


def test_decode_worker_is_strict_on_mutants(corpus, tiny_clip):
    transform = tiny_clip.image_transform()
    table: dict[str, Counter] = {}
    wrong: list[str] = []
    for name, items in corpus.items():
        work = [FileEntry(str(p), p.stat().st_size, p.stat().st_mtime_ns) for _, p, _ in items]
        ds = DecodeDataset(work, transform, DRAFT)
        c = table.setdefault(name, Counter())
        for i, (kind, p, b) in enumerate(items):
            res, pixels = ds[i]
            c["tried"] += 1
            if res.error is not None:
                c["skipped"] += 1
                assert SPECIFIC.match(res.error) and "\n" not in res.error and len(res.error) <= 200, \
                    f"{p.name}: unspecific reason {res.error!r}"
                continue
            c["accepted"] += 1
            ref = strict_reference(b, DRAFT)
            if isinstance(ref, Exception):
                wrong.append(f"{p.name}: indexed, but Pillow's strict decode fails: {ref!r}")
            elif pixels is None or not torch.equal(pixels, transform(bound_aspect(ref))):
                wrong.append(f"{p.name}: indexed pixels differ from Pillow's strict decode")
    total = sum(table.values(), Counter())
    lines = [f"{n:<11} tried {c['tried']:>4}  skipped {c['skipped']:>4}  accepted {c['accepted']:>4}"
             for n, c in table.items()]
    print("\nstrict-decode fuzz (decode worker):\n" + "\n".join(lines)
          + f"\nall         tried {total['tried']:>4}  skipped {total['skipped']:>4}  accepted {total['accepted']:>4}"
          f"  silently wrong {len(wrong)}")
    assert total["tried"] == len(corpus) * PER_FORMAT
    # the fuzz must exercise both outcomes in every format, or it tests nothing
    assert all(c["skipped"] > 0 for c in table.values()), table
    assert all(c["accepted"] > 0 for n, c in table.items() if n != "PNG"), table
    assert not wrong, "\n".join(wrong[:20])


def test_build_index_stores_strict_decodes_only(corpus, tiny_clip, tmp_path):
    """A subset through the real pipeline (decode worker process, LanceDB): rows are exactly the
    mutants that Pillow decodes strictly, with the vector of that decode; the rest are skipped."""
    coll = tmp_path / "coll"
    coll.mkdir()
    rng = random.Random(SEED + 1)
    picked: dict[str, bytes] = {}
    for name, items in corpus.items():
        for kind, p, b in rng.sample(items, 12):
            rel = f"{name}_{p.name}"
            (coll / rel).write_bytes(b)
            picked[rel] = b
    idx = Index.create_or_open(tmp_path / "idx", tiny_clip, store="lancedb")
    rep = build_index(idx, [coll], IndexOptions(batch_size=4, workers=1, commit_every=16))
    assert not rep.interrupted
    rows = {Path(r["path"]).name: r for r in all_rows(idx).values()}
    skips = {Path(s["path"]).name: s["reason"] for s in idx.skipped()}
    transform = tiny_clip.image_transform()
    wrong = []
    for rel, b in picked.items():
        ref = strict_reference(b, DRAFT)
        if rel in skips:
            assert rel not in rows and SPECIFIC.match(skips[rel]), (rel, skips[rel])
            continue
        assert rel in rows, f"{rel}: neither indexed nor skipped"
        if isinstance(ref, Exception):
            wrong.append(f"{rel}: stored, but Pillow's strict decode fails: {ref!r}")
            continue
        want = tiny_clip.embed_pixels(transform(bound_aspect(ref))[None])[0]
        got = np.asarray(rows[rel]["vector"], np.float32)
        if not np.allclose(got, want, atol=1e-5):
            wrong.append(f"{rel}: stored vector is not the vector of the strict decode")
    print(f"\nstrict-decode fuzz (build_index): {len(picked)} mutants, {len(skips)} skipped, "
          f"{len(rows)} stored, silently wrong {len(wrong)}")
    assert skips and rows
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", list(EXT))
def test_skip_reasons_name_the_file_problem(name):
    """Property (no hypothesis): for every truncation point of every format, the decoder's reason is
    one specific line naming the problem, never a traceback or a Python exception type."""
    from imgrag.retrieval.imageio import ImageDecodeError, decode_image

    data = sources()[name]
    seen = set()
    for cut in range(0, len(data), max(1, len(data) // 97)):
        try:
            decode_image(data[:cut], draft_size=DRAFT)
        except ImageDecodeError as e:
            r = e.reason
            assert SPECIFIC.match(r), r
            assert "Traceback" not in r and "\n" not in r and "Error:" not in r and len(r) <= 200, r
            seen.add(r)
    assert seen  # truncations were refused at all
