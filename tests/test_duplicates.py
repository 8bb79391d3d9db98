"""Near-duplicate groups: planted copies found, look-alikes kept apart, the keeper rule, stable output."""

from __future__ import annotations

import os
import shutil
from datetime import datetime

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.retrieval.errors import BadQueryError
from imgrag.retrieval.index import Index
from imgrag.retrieval.perceptual import hash_file, image_hashes
from imgrag.retrieval.queries.duplicates import DuplicateOptions, find_duplicates, keeper_key

from fakes import FakeEmbedder

OPTS = IndexOptions(batch_size=4, workers=0)
LOOSE = 0.5  # the fake embedder's cosine: every picture here scores above it with every other


def scene(seed: int, size=(256, 192)) -> Image.Image:
    """A photo-like picture: smooth random colour blobs, same overall colour statistics for every seed (so the
    fake embedder, which sees mean and spread of colour, places distinct scenes as close as copies)."""
    rng = np.random.default_rng(seed)
    low = rng.random((6, 8, 3)).astype(np.float32)
    img = Image.fromarray((low * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    return img


def planted(tmp_path):
    """5 distinct scenes; scenes 0 and 1 get copies (resized, JPEG 40, cropped 6 %, brightened, byte copy)."""
    d = tmp_path / "photos"
    (d / "album").mkdir(parents=True)
    for s in range(5):
        scene(s).save(d / f"scene{s}.png")
        os.utime(d / f"scene{s}.png", ns=(10**18, 10**18))  # the originals are the oldest files
    a, b = scene(0), scene(1)
    a.resize((128, 96), Image.Resampling.LANCZOS).save(d / "scene0_small.png")
    a.save(d / "scene0_q40.jpg", quality=40)
    w, h = b.size
    b.crop((int(w * .06), int(h * .06), w - int(w * .06), h - int(h * .06))).save(d / "scene1_crop.png")
    ImageEnhance.Brightness(b).enhance(1.15).save(d / "scene1_bright.png")
    shutil.copy(d / "scene1.png", d / "album" / "scene1.png")  # the same file in a second album
    truth = [{str(d / n) for n in ("scene0.png", "scene0_small.png", "scene0_q40.jpg")},
             {str(d / n) for n in ("scene1.png", "scene1_crop.png", "scene1_bright.png", "album/scene1.png")}]
    return d, truth


@pytest.fixture(params=["lancedb", "faiss"])
def indexed(tmp_path, request):
    d, truth = planted(tmp_path)
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store=request.param)
    build_index(idx, [str(d)], OPTS)
    return idx, truth


def test_planted_copies_found_and_look_alikes_apart(indexed):
    idx, truth = indexed
    rep = find_duplicates(idx.store, DuplicateOptions(threshold=LOOSE))
    assert [{m.path for m in g} for g in rep.groups] == [truth[1], truth[0]]  # largest first
    assert rep.items == 10 and rep.exact_pairs >= 1 and rep.rejected > 0
    g1 = {m.path: m for m in rep.groups[0]}
    assert g1[next(p for p in truth[1] if p.endswith("album/scene1.png"))].same_file
    # the embedding alone cannot tell the scenes apart: without the pixel check they all merge
    loose = find_duplicates(idx.store, DuplicateOptions(threshold=LOOSE, verify=False))
    assert max(len(g) for g in loose.groups) > len(truth[1])


def test_keeper_is_largest_then_oldest(indexed):
    idx, truth = indexed
    rep = find_duplicates(idx.store, DuplicateOptions(threshold=LOOSE))
    keepers = {g[0].path for g in rep.groups}
    # scene0.png: larger than the resized copy, as large as the JPEG copy but older
    assert keepers == {p for t in truth for p in t if p.endswith(("/photos/scene0.png", "/photos/scene1.png"))}
    for g in rep.groups:
        assert g[0].keeper and not any(m.keeper for m in g[1:]) and g[0].score == 1.0
        assert all(m.width * m.height <= g[0].width * g[0].height for m in g)
    row = {"width": 10, "height": 10, "path": "/b", "mtime_ns": 5, "taken_at": None}
    assert keeper_key({**row, "width": 20}) < keeper_key(row)  # more pixels first
    assert keeper_key({**row, "mtime_ns": 1}) < keeper_key(row)  # then older
    assert keeper_key({**row, "taken_at": datetime(2001, 1, 1)}) < keeper_key({**row, "mtime_ns": 0})
    assert keeper_key({**row, "path": "/a"}) < keeper_key(row)  # then the path, so ties are stable


def test_output_is_stable_across_runs_and_batches(indexed):
    idx, _ = indexed
    runs = [find_duplicates(idx.store, DuplicateOptions(threshold=LOOSE, batch_size=b)).to_json() for b in (1, 3, 512)]
    assert runs[0] == runs[1] == runs[2] and runs[0]
    assert {"path", "keeper", "size", "width", "height", "score"} <= set(runs[0][0][0])


def test_exact_store_gets_a_temporary_graph_with_the_same_groups(indexed):
    idx, truth = indexed
    small = find_duplicates(idx.store, DuplicateOptions(threshold=LOOSE))  # 10 images: the store's own search
    assert small.candidate_source.startswith("store:")
    # an exact store over exact_max_rows images: never all pairs, a temporary HNSW graph answers
    big = find_duplicates(idx.store, DuplicateOptions(threshold=LOOSE, exact_max_rows=5))
    forced = find_duplicates(idx.store, DuplicateOptions(threshold=LOOSE, candidates="hnsw"))
    assert big.candidate_source == forced.candidate_source == "temporary HNSW32,SQfp16"
    assert big.to_json() == forced.to_json() and [{m.path for m in g} for g in big.groups] == [truth[1], truth[0]]
    assert big.candidates == small.candidates and big.items == small.items == 10


def test_store_with_an_ann_index_is_searched_itself(tmp_path):
    from imgrag.retrieval.queries.duplicates import store_has_ann

    d, truth = planted(tmp_path)
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store="faiss", store_options={"factory": "HNSW32"})
    build_index(idx, [str(d)], OPTS)
    assert store_has_ann(idx.store)
    rep = find_duplicates(idx.store, DuplicateOptions(threshold=LOOSE, exact_max_rows=5))
    assert rep.candidate_source == "store: HNSW32"
    assert [{m.path for m in g} for g in rep.groups] == [truth[1], truth[0]]
    flat = Index.create_or_open(tmp_path / "flat", FakeEmbedder(), store="faiss")
    assert not store_has_ann(flat.store)


def test_bursts_are_looser_and_bad_options_refused(indexed):
    idx, truth = indexed
    strict = find_duplicates(idx.store, DuplicateOptions(threshold=LOOSE, min_similarity=0.999))
    assert sum(len(g) for g in strict.groups) < sum(len(t) for t in truth)  # the crop/brightened copies drop out
    assert DuplicateOptions(bursts=True).resolved() < DuplicateOptions().resolved()
    for bad in (DuplicateOptions(threshold=2), DuplicateOptions(min_similarity=-3), DuplicateOptions(k=0),
                DuplicateOptions(candidates="all")):
        with pytest.raises(BadQueryError):
            bad.resolved()


def test_thumbnail_similarity_separates_copies_from_other_scenes(tmp_path):
    a, b = image_hashes(scene(7)), image_hashes(scene(8))
    small = image_hashes(scene(7).resize((100, 75)))
    bright = image_hashes(ImageEnhance.Brightness(scene(7)).enhance(1.2))
    assert small.similarity(a) > 0.95 and bright.similarity(a) > 0.9
    assert a.similarity(b) < 0.6
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert hash_file(str(tmp_path / "bad.jpg")) is None
