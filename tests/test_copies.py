"""Exact copies (same content hash): embedded once per run, one search result listing the other paths.

A folder holds one picture as three files plus a symlink to one of them, and two other pictures: the index
embeds three contents and reuses the vector for the other three paths; search shows the picture once with
its copies listed (CLI text, JSON, web backend), ``--all-copies`` shows every path; both stores.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from imgrag.app.cli import main
from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.retrieval.index import Index
from imgrag.retrieval.queries.copies import collapse, copy_key, distinct_top
from imgrag.retrieval.queries.search import Term, search
from imgrag.retrieval.stores.base import Hit

from fakes import FakeEmbedder

STORES = ["lancedb", "faiss"]


def collection(tmp_path):
    """red.png ×3 (two byte copies, one in an album) + a symlink to it, green.png and blue.png."""
    d = tmp_path / "photos"
    (d / "album").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, rgb in (("red", (220, 30, 30)), ("green", (30, 200, 40)), ("blue", (20, 40, 210))):
        px = np.clip(np.asarray(rgb) + rng.integers(-20, 20, (48, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(px).save(d / f"{name}.png")
    shutil.copy(d / "red.png", d / "red copy.png")
    shutil.copy(d / "red.png", d / "album" / "red.png")
    os.symlink(d / "red.png", d / "red-link.png")
    reds = {str(d / n) for n in ("red.png", "red copy.png", "album/red.png", "red-link.png")}
    return d, reds


@pytest.fixture(params=STORES)
def indexed(tmp_path, request):
    d, reds = collection(tmp_path)
    emb = FakeEmbedder()
    idx = Index.create_or_open(tmp_path / "idx", emb, store=request.param)
    # batch 2: the copies arrive both in the batch that holds the first one and in later batches
    rep = build_index(idx, [str(d)], IndexOptions(batch_size=2, workers=0))
    return idx, reds, rep, emb, d


def test_copies_embedded_once_per_run(indexed):
    idx, reds, rep, emb, d = indexed
    assert (rep.embedded, rep.reused, rep.total_items) == (3, 3, 6)
    assert emb.images_embedded == 3  # the model saw each content once
    rows = idx.store.get(sorted(reds), columns=["id", "hash", "width", "vector"]).to_pylist()
    assert len(rows) == 4 and len({r["hash"] for r in rows}) == 1 and {r["width"] for r in rows} == {64}
    assert all(np.array_equal(r["vector"], rows[0]["vector"]) for r in rows)
    again = build_index(idx, [str(d)], IndexOptions(batch_size=2, workers=0))
    assert (again.embedded, again.reused, again.unchanged) == (0, 0, 6)


def test_search_folds_copies_and_all_copies_shows_each(indexed):
    idx, reds, *_ = indexed
    hits = search(idx, "red", k=3)
    assert [h.path in reds for h in hits] == [True, False, False]  # the red picture once, then the others
    assert len(hits) == 3 and {hits[0].path, *hits[0].row["copies"]} == reds
    assert len(hits[0].row["copies"]) == 3 and all(h.row["copies"] == [] for h in hits[1:])
    every = search(idx, "red", k=6, all_copies=True)
    assert {h.path for h in every[:4]} == reds and len(every) == 6
    assert all("copies" not in h.row for h in every)
    # k=1 with three copies ranked right behind the first: still one result listing all of them
    one = search(idx, "red", k=1)
    assert len(one) == 1 and len(one[0].row["copies"]) == 3
    # a query image that is indexed is excluded, its copies still fold into one result
    img = search(idx, [Term("image", sorted(reds)[0], 1.0)], k=2)
    assert len(img) == 2 and img[0].path in reds and len(img[0].row["copies"]) == 2


@pytest.mark.parametrize("store", STORES)
def test_cli_text_json_and_all_copies(tmp_path, capsys, tiny_model_configs, store):
    d, reds = collection(tmp_path)
    root = str(tmp_path / "idx")
    assert main(["index", str(d), "--index", root, "--model", "imgrag-tiny-clip", "--workers", "0",
                 "--store", store, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert (rep["embedded"], rep["reused"]) == (3, 3)
    assert main(["search", "--index", root, "--image", str(d / "red.png"), "-k", "5", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and all("copies" in h for h in hits)  # the red copies once, then the other two
    red = [h for h in hits if h["path"] in reds]
    assert len(red) == 1 and {red[0]["path"], *red[0]["copies"]} == reds - {str(d / "red.png")}
    assert main(["search", "--index", root, "--image", str(d / "red.png"), "-k", "5", "--json",
                 "--all-copies"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 5 and {h["path"] for h in hits} >= reds - {str(d / "red.png")}
    assert all(h["copies"] == [] for h in hits)
    assert main(["search", "--index", root, "a photo", "-k", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("also at: ") == 1 and len([ln for ln in out.splitlines() if ln[:3].strip().isdigit()]) == 3


def test_collapse_keeps_everything_that_is_not_a_copy():
    def hit(i, h, score, page=None):
        return Hit(i, i.split("#")[0], score, {"hash": h, "page": page})

    hits = [hit("/a.pdf#page=1", "D", .9, 1), hit("/b.pdf#page=1", "D", .9, 1), hit("/a.pdf#page=2", "D", .8, 2),
            hit("/x.png", None, .7), hit("/y.png", None, .7), hit("/b.pdf#page=2", "D", .6, 2)]
    out = collapse(hits)
    # two copies of a PDF fold page by page; rows without a hash are never folded
    assert [h.id for h in out] == ["/a.pdf#page=1", "/a.pdf#page=2", "/x.png", "/y.png"]
    assert out[0].row["copies"] == ["/b.pdf"] and out[1].row["copies"] == ["/b.pdf"] and out[2].row["copies"] == []
    assert copy_key({"hash": "D", "page": 3}) == "D#page=3" and copy_key({"hash": None}) is None
    # distinct_top fetches more until k distinct contents (plus one) are seen, or the source runs dry
    pool = [hit(f"/c{i}.png", "C", 1.0) for i in range(7)] + [hit(f"/{i}.png", str(i), .5) for i in range(5)]
    asked: list[int] = []

    def fetch(n):
        asked.append(n)
        return pool[:n], n < len(pool)

    top = distinct_top(fetch, 3, 4)
    assert [h.id for h in top] == ["/c0.png", "/0.png", "/1.png"] and len(top[0].row["copies"]) == 6
    assert asked == [4, 16]
    assert [h.id for h in distinct_top(fetch, 2, 2, all_copies=True)] == ["/c0.png", "/c1.png"]


def test_web_backend_lists_copies_and_all_copies_option(indexed, tmp_path):
    from imgrag.app.web.backend import Backend, UIConfig
    from imgrag.app.web.html import detail_html

    idx, reds, *_ = indexed
    b = Backend(UIConfig(index_root=idx.root, thumb_dir=tmp_path / "thumbs", index_workers=0), index=idx)
    items = b.search_text("red", k=3)
    assert len(items) == 3 and items[0].path in reds and {items[0].path, *items[0].copies} == reds
    assert "+3 copies" in items[0].caption and "cop" not in items[1].caption
    d = items[0].to_dict()
    assert d["copies"] == list(items[0].copies) and items[1].to_dict()["copies"] == []
    assert "also at" in detail_html(d) and "also at" not in detail_html(items[1].to_dict())
    green = next(it for it in items if it.path.endswith("green.png"))
    like = b.more_like(green.id, k=2)  # image → image from the stored vector: the reds once
    assert len(like) == 2 and sum(it.path in reds for it in like) == 1
    every = Backend(UIConfig(index_root=idx.root, thumb_dir=tmp_path / "thumbs2", index_workers=0,
                             all_copies=True), index=idx)
    got = every.search_text("red", k=4)
    assert {it.path for it in got} == reds and all(it.copies == () for it in got)


@pytest.mark.parametrize("store", STORES)
def test_two_copies_of_a_pdf_reuse_and_fold_page_by_page(tmp_path, store):
    from test_documents import write_text_pdf

    from imgrag.retrieval.queries.hybrid import search_documents

    d = tmp_path / "docs"
    (d / "old").mkdir(parents=True)
    write_text_pdf(d / "guide.pdf", ["Cormorants nest on the sea cliffs", "Puffins dig burrows in the turf"],
                   fills=[(200, 230, 250), (250, 230, 200)])
    shutil.copy(d / "guide.pdf", d / "old" / "guide.pdf")
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store=store)
    rep = build_index(idx, [str(d)], IndexOptions(batch_size=8, workers=0, dpi=50))
    assert (rep.embedded, rep.reused, rep.total_items) == (2, 2, 4)  # each page once, its copy reused
    rows = {r["id"]: r for r in idx.store.get([f"{d / 'old' / 'guide.pdf'}#page={p}" for p in (1, 2)]).to_pylist()}
    assert {r["page"] for r in rows.values()} == {1, 2} and "Puffins" in rows[f"{d / 'old' / 'guide.pdf'}#page=2"]["text"]
    for mode in ("hybrid", "text", "vector"):
        pages = {1} if mode == "text" else {1, 2}  # text mode: only the page holding the words
        hits = search_documents(idx, "cormorants cliffs", k=4, mode=mode)
        assert sorted(h.row["page"] for h in hits) == sorted(pages), mode  # page by page, not all in one
        assert all(len(h.row["copies"]) == 1 for h in hits)
        every = search_documents(idx, "cormorants cliffs", k=4, mode=mode, all_copies=True)
        assert len(every) == 2 * len(pages) and all("copies" not in h.row for h in every)
