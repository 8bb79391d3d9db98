"""PDF documents: page items, text layer, OCR, encrypted/corrupt/image-only PDFs, incremental updates of
rows and of the full-text index, keyword/hybrid ranking, layout-preserving views, bounded memory.

PDFs are generated here: text-layer PDFs with fpdf2 (real fonts, real text objects, real encryption),
image-only PDFs with Pillow's PDF writer (a scan: a picture of text, no text layer). Indexing uses the
deterministic fake embedder (mean colour) unless a test needs a real model; OCR tests need the
``tesseract`` program (Debian tesseract-ocr, installed by .ci/run) and are skipped without it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from fakes import FakeEmbedder
from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.retrieval import ocr as ocr_mod
from imgrag.retrieval.index import Index
from imgrag.retrieval.layout import (DENSE_CHARS_PER_SQIN, PageTransform, grid_boxes, is_dense, pad_to_square,
                                     page_views, pool_views, text_density, tile_boxes)
from imgrag.retrieval.queries.hybrid import parse_weights, rrf_fuse, search_documents
from imgrag.retrieval.stores.base import Hit
from imgrag.retrieval.textsearch import bm25_search, highlight, snippet


def pdf_tools():
    """fpdf2 writes the test PDFs, pypdfium2 reads them: skipped only in the tests that make a PDF (the
    layout, ranking, snippet and OCR-switch tests need neither)."""
    pytest.importorskip("pypdfium2")
    return pytest.importorskip("fpdf")


HAS_TESSERACT = ocr_mod.available("eng")
needs_ocr = pytest.mark.skipif(not HAS_TESSERACT, reason="tesseract (tesseract-ocr + tesseract-ocr-eng) not installed")

OPTS = dict(workers=0, batch_size=8)


# ------------------------------------------------------------------------------------------------
# PDF fixtures
# ------------------------------------------------------------------------------------------------
def write_text_pdf(path: Path, pages: list[str], fills: list[tuple[int, int, int] | None] | None = None,
                   password: str | None = None) -> Path:
    """A real text-layer PDF (A4) with one string per page, optionally a full-page background colour."""
    pdf = pdf_tools().FPDF(format="A4")
    pdf.set_auto_page_break(False)
    if password:
        pdf.set_encryption(owner_password="owner-" + password, user_password=password)
    for i, text in enumerate(pages):
        pdf.add_page()
        fill = fills[i] if fills else None
        if fill is not None:
            pdf.set_fill_color(*fill)
            pdf.rect(0, 0, 210, 297, style="F")
        pdf.set_font("helvetica", size=12)
        pdf.set_xy(15, 20)
        if text:
            pdf.multi_cell(180, 6, text)
    pdf.output(str(path))
    return path


def text_image(lines: list[str], size=(1240, 1754), font_size=36) -> Image.Image:
    """A white 'scanned page' with black text (no text layer once saved as a picture)."""
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=font_size)
    y = 120
    for line in lines:
        d.text((100, y), line, fill="black", font=font)
        y += int(font_size * 1.6)
    return im


def write_image_pdf(path: Path, pages: list[Image.Image]) -> Path:
    pdf_tools()
    pages[0].save(path, "PDF", resolution=150.0, save_all=True, append_images=pages[1:])
    return path


def rows_of(index) -> dict[str, dict]:
    out = {}
    for b in index.store.scan(columns=["id", "path", "page", "text", "width", "height", "hash", "vector"]):
        for r in b.to_pylist():
            out[r["id"]] = r
    return out


def make_index(tmp_path, name="idx", store="lancedb", emb=None) -> Index:
    return Index.create_or_open(tmp_path / name, emb or FakeEmbedder(), store=store)


# ------------------------------------------------------------------------------------------------
# indexing
# ------------------------------------------------------------------------------------------------
def test_pages_become_items_with_text_and_render_size(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    pdf = write_text_pdf(docs / "manual.pdf", ["Installation guide for the flux capacitor",
                                               "Troubleshooting: the warp coil overheats",
                                               "Appendix: list of spare parts"])
    Image.new("RGB", (64, 48), (200, 10, 10)).save(docs / "photo.png")
    idx = make_index(tmp_path)
    rep = build_index(idx, [docs], IndexOptions(dpi=100, **OPTS))
    assert (rep.documents, rep.pages, rep.embedded) == (1, 3, 4)
    rows = rows_of(idx)
    assert sorted(rows) == sorted([f"{pdf}#page={i}" for i in (1, 2, 3)] + [str(docs / "photo.png")])
    p2 = rows[f"{pdf}#page=2"]
    assert p2["path"] == str(pdf) and p2["page"] == 2
    assert "warp coil overheats" in p2["text"]
    # A4 = 595.28 x 841.89 pt rendered at 100 dpi (pdfium rounds up)
    assert (p2["width"], p2["height"]) == (math.ceil(595.28 * 100 / 72), math.ceil(841.89 * 100 / 72))
    photo = rows[str(docs / "photo.png")]
    assert photo["page"] is None and photo["text"] is None
    # every page vector is L2-normalised
    v = np.asarray([r["vector"] for r in rows.values()], dtype=np.float32)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_encrypted_corrupt_and_empty_pdfs_are_skipped_with_reasons(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    write_text_pdf(docs / "good.pdf", ["a good page"])
    write_text_pdf(docs / "locked.pdf", ["top secret"], password="s3cret")
    (docs / "garbage.pdf").write_bytes(b"%PDF-1.7\nthis is not really a pdf\n")
    (docs / "empty.pdf").write_bytes(b"")
    good = docs / "good.pdf"
    (docs / "truncated.pdf").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    idx = make_index(tmp_path)
    rep = build_index(idx, [docs], IndexOptions(**OPTS))
    assert set(rows_of(idx)) == {f"{good}#page=1"}
    reasons = {Path(s["path"]).name: s["reason"] for s in idx.skipped()}
    assert reasons["locked.pdf"] == "encrypted PDF (password required); decrypt it to index it"
    assert reasons["garbage.pdf"].startswith("not a valid PDF (")
    assert reasons["empty.pdf"].startswith("not a valid PDF (")
    assert reasons["truncated.pdf"].startswith("not a valid PDF (")
    assert len(rep.skipped) == 4
    # unchanged bad files are not retried; a re-run changes nothing
    rep2 = build_index(idx, [docs], IndexOptions(**OPTS))
    assert (rep2.embedded, rep2.new_or_changed, len(rep2.skipped)) == (0, 0, 4)


def test_pdf_that_becomes_corrupt_loses_its_pages(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    pdf = write_text_pdf(docs / "d.pdf", ["one", "two"])
    idx = make_index(tmp_path)
    build_index(idx, [docs], IndexOptions(**OPTS))
    assert len(rows_of(idx)) == 2
    pdf.write_bytes(b"%PDF-1.4 broken")
    build_index(idx, [docs], IndexOptions(**OPTS))
    assert rows_of(idx) == {}
    assert [s["path"] for s in idx.skipped()] == [str(pdf)]


def test_incremental_changed_shorter_renamed_and_deleted_pdfs(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    a = write_text_pdf(docs / "a.pdf", ["alpha one", "alpha two", "alpha three"])
    write_text_pdf(docs / "b.pdf", ["beta one"])
    emb = FakeEmbedder()
    idx = make_index(tmp_path, emb=emb)
    build_index(idx, [docs], IndexOptions(**OPTS))
    assert len(rows_of(idx)) == 4
    # unchanged: nothing rendered or embedded
    before = emb.images_embedded
    rep = build_index(idx, [docs], IndexOptions(**OPTS))
    assert (rep.unchanged, rep.embedded, emb.images_embedded) == (2, 0, before)
    # a changed PDF with fewer pages: re-indexed, its old page 3 removed
    write_text_pdf(a, ["alpha one revised", "alpha two revised"])
    rep = build_index(idx, [docs], IndexOptions(**OPTS))
    rows = rows_of(idx)
    assert rep.embedded == 2 and sorted(i for i in rows if i.startswith(str(a))) == [f"{a}#page=1", f"{a}#page=2"]
    assert rows[f"{a}#page=1"]["text"] == "alpha one revised"
    # renamed: vectors and text reused by (content hash, page), no page rendered again
    before = emb.images_embedded
    os.rename(a, docs / "renamed.pdf")
    rep = build_index(idx, [docs], IndexOptions(**OPTS))
    rows = rows_of(idx)
    assert rep.reused == 2 and emb.images_embedded == before
    assert rows[f"{docs / 'renamed.pdf'}#page=2"]["text"] == "alpha two revised"
    assert not any(i.startswith(str(a)) for i in rows)
    # deleted: all of its pages go
    os.remove(docs / "b.pdf")
    rep = build_index(idx, [docs], IndexOptions(**OPTS))
    assert sorted(rows_of(idx)) == [f"{docs / 'renamed.pdf'}#page=1", f"{docs / 'renamed.pdf'}#page=2"]
    assert rep.deleted == 1


def test_a_document_is_committed_whole(tmp_path, monkeypatch):
    """With tiny commit chunks, an interrupted run never leaves a partial document that a re-run would
    take for complete: it is re-indexed in full."""
    docs = tmp_path / "docs"
    docs.mkdir()
    pdf = write_text_pdf(docs / "long.pdf", [f"page number {i}" for i in range(1, 13)])
    idx = make_index(tmp_path)
    emb = idx.embedder
    calls = {"n": 0}
    real = emb.embed_pixels

    def flaky(px):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(px)
    monkeypatch.setattr(emb, "embed_pixels", flaky)
    rep = build_index(idx, [docs], IndexOptions(workers=0, batch_size=2, commit_every=1))
    assert rep.interrupted
    assert rows_of(idx) == {}  # 4 of 12 pages were embedded, none committed
    monkeypatch.setattr(emb, "embed_pixels", real)
    rep = build_index(idx, [docs], IndexOptions(workers=0, batch_size=2, commit_every=1))
    assert rep.embedded == 12 and len(rows_of(idx)) == 12
    assert rows_of(idx)[f"{pdf}#page=12"]["text"] == "page number 12"


def test_image_only_pdf_without_ocr_is_indexed_and_reported(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    write_image_pdf(docs / "scan.pdf", [text_image(["INVOICE 4711"]), text_image(["Total due: 99 EUR"])])
    idx = make_index(tmp_path)
    rep = build_index(idx, [docs], IndexOptions(ocr_pages="off", **OPTS))
    rows = rows_of(idx)
    assert len(rows) == 2 and all(r["text"] is None for r in rows.values())
    assert rep.pages_without_text == 2 and rep.ocr_pages == 0


@needs_ocr
def test_image_only_pdf_is_ocred(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    scan = write_image_pdf(docs / "scan.pdf", [text_image(["Quarterly report", "Revenue grew by seventeen percent"]),
                                               text_image(["Appendix", "The zebra crossing was repainted"])])
    idx = make_index(tmp_path)
    rep = build_index(idx, [docs], IndexOptions(**OPTS))
    assert rep.ocr_pages == 2 and rep.pages_without_text == 0
    rows = rows_of(idx)
    t1, t2 = rows[f"{scan}#page=1"]["text"], rows[f"{scan}#page=2"]["text"]
    assert "Revenue grew by seventeen percent" in t1
    assert "zebra crossing was repainted" in t2
    hits = idx.store.text_search("zebra crossing", 5)
    assert [h.id for h in hits] == [f"{scan}#page=2"]


@needs_ocr
def test_ocr_switch_reads_screenshots_not_photos(tmp_path, sample_images):
    folder = sample_images[0].parent
    text_image(["ERROR 503: Service Unavailable", "Please retry the upload later"], size=(1000, 400),
               font_size=40).save(folder / "screenshot.png")
    idx = make_index(tmp_path)
    build_index(idx, [folder], IndexOptions(ocr_images=True, **OPTS))
    rows = rows_of(idx)
    assert "Service Unavailable" in rows[str(folder / "screenshot.png")]["text"]
    for p in sample_images:  # real photos: no confident words → no text
        assert rows[str(p)]["text"] is None, (p, rows[str(p)]["text"])
    hits = search_documents(idx, "service unavailable", k=3, mode="text")
    assert hits[0].path == str(folder / "screenshot.png")


def test_ocr_switch_without_tesseract_is_a_clear_error(tmp_path, monkeypatch, sample_images):
    from imgrag.retrieval.errors import ImgragError

    monkeypatch.setenv("IMGRAG_TESSERACT", str(tmp_path / "no-such-tesseract"))
    monkeypatch.setattr(ocr_mod, "tesseract_path", lambda: None)
    idx = make_index(tmp_path)
    with pytest.raises(ImgragError, match="tesseract.*apt-get install tesseract-ocr"):
        build_index(idx, [sample_images[0].parent], IndexOptions(ocr_images=True, **OPTS))


# ------------------------------------------------------------------------------------------------
# keyword / hybrid search
# ------------------------------------------------------------------------------------------------
def test_full_text_index_follows_incremental_runs(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    a = write_text_pdf(docs / "a.pdf", ["the cormorant dives for fish", "nothing to see here"])
    idx = make_index(tmp_path)
    build_index(idx, [docs], IndexOptions(**OPTS))
    store = idx.store
    assert store._fts_index() is not None  # built by optimize() at the end of the run
    assert [h.id for h in store.text_search("cormorant", 5)] == [f"{a}#page=1"]
    # change: the word moves to page 2 and a new document mentions it twice
    write_text_pdf(a, ["nothing to see here", "a cormorant on the pier"])
    b = write_text_pdf(docs / "b.pdf", ["cormorant cormorant colony"])
    build_index(idx, [docs], IndexOptions(**OPTS))
    st = store._tbl.index_stats(store._fts_index().name)
    assert st.num_unindexed_rows == 0  # new rows were folded into the index
    assert [h.id for h in store.text_search("cormorant", 5)] == [f"{b}#page=1", f"{a}#page=2"]
    # delete: its pages leave the keyword results too
    os.remove(b)
    build_index(idx, [docs], IndexOptions(**OPTS))
    assert [h.id for h in store.text_search("cormorants", 5)] == [f"{a}#page=2"]  # stemmed


def test_text_search_same_ranking_in_faiss_bm25_and_lancedb(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    pages = ["solar panels convert sunlight into electricity",
             "wind turbines and solar farms feed the grid",
             "the history of the steam engine",
             "solar solar solar eclipse viewing glasses"]
    write_text_pdf(docs / "energy.pdf", pages)
    lance = make_index(tmp_path, "l", "lancedb")
    faiss = make_index(tmp_path, "f", "faiss")
    for idx in (lance, faiss):
        build_index(idx, [docs], IndexOptions(**OPTS))
    for q in ("solar", "steam engine history", "grid wind"):
        lh = [h.row["page"] for h in lance.store.text_search(q, 4)]
        fh = [h.row["page"] for h in faiss.store.text_search(q, 4)]
        assert lh == fh, (q, lh, fh)
    assert [h.row["page"] for h in faiss.store.text_search("solar", 4)] == [4, 1, 2]
    assert faiss.store.text_search("the of and", 4) == []  # stop words only
    assert [h.row["page"] for h in bm25_search(faiss.store, "steam", 4)] == [3]


def test_rrf_fusion_numbers():
    def hits(ids):
        return [Hit(i, i, 1.0 - n / 10, {}) for n, i in enumerate(ids)]
    fused = rrf_fuse([hits(["a", "b", "c"]), hits(["c", "d", "a"])], (1.0, 1.0), rrf_k=60)
    scores = {h.id: h.score for h in fused}
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 63)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["b"] == pytest.approx(1 / 62) and scores["d"] == pytest.approx(1 / 62)
    assert [h.id for h in fused][:2] == ["a", "c"]  # tie broken by best single rank, then id
    assert fused[0].row["rank_vector"] == 1 and fused[0].row["rank_text"] == 3
    # weights: text only → text order
    assert [h.id for h in rrf_fuse([hits(["a", "b"]), hits(["b", "a"])], (0.0, 1.0))] == ["b", "a"]
    assert parse_weights("1,0.5") == (1.0, 0.5)
    from imgrag.retrieval.errors import BadQueryError

    for bad in ("1", "a,b", "-1,1", "0,0"):
        with pytest.raises(BadQueryError):
            parse_weights(bad)


def _colour_corpus(tmp_path):
    """Pages whose look (colour) and words disagree, so each mode has a different winner.

    FakeEmbedder: an image's vector is its mean colour, the text "red" maps to the red direction.
    """
    docs = tmp_path / "docs"
    docs.mkdir()
    red, pink, orange, white = (230, 20, 20), (235, 90, 110), (240, 120, 40), None
    pages = ["", "red car", "red red red red tomato soup recipe with red peppers", "", "", "green garden"]
    fills = [red, red, white, pink, orange, white]
    return write_text_pdf(docs / "colours.pdf", pages, fills), docs


def test_hybrid_beats_each_mode_alone_on_a_page_that_matches_both(tmp_path):
    pdf, docs = _colour_corpus(tmp_path)
    idx = make_index(tmp_path)
    build_index(idx, [docs], IndexOptions(page_tiles=0, **OPTS))

    def pages(mode, **kw):
        return [h.row["page"] for h in search_documents(idx, "red", k=6, mode=mode, **kw)]
    vec, txt, hyb = pages("vector"), pages("text"), pages("hybrid")
    assert vec[0] == 1  # the plainest red page (no text at all)
    assert txt[:2] == [3, 2]  # most mentions of "red" (a white page), then the short "red car"
    assert hyb[0] == 2  # red-looking AND says red: 2nd in both lists, 1st fused
    assert pages("hybrid", weights="0,1")[:2] == [3, 2]  # weights move it back to one side
    assert pages("hybrid", weights="1,0")[0] == 1
    hit = search_documents(idx, "red", k=1, mode="hybrid")[0]
    assert hit.row["snippet"] == "red car" and hit.row["match_spans"] == [(0, 3)]
    assert search_documents(idx, "red", k=3, mode="auto")[0].row["page"] == 2  # auto → hybrid: text exists


def test_snippet_picks_the_densest_window_and_highlights():
    text = ("Intro words " * 30) + "The answer: set the flux capacitor to 1.21 gigawatts. " + ("Outro " * 40)
    snip, spans = snippet(text, "flux capacitor gigawatts", width=80)
    assert "flux capacitor" in snip and "gigawatts" in snip and len(snip) <= 82
    marked = highlight(snip, spans)
    assert "[flux] [capacitor]" in marked and "[gigawatts]" in marked
    assert snippet(None, "x") == ("", [])


def test_cli_search_modes_show_document_page_and_snippet(tmp_path, capsys, tiny_clip):
    from imgrag.app.cli import main

    docs = tmp_path / "docs"
    docs.mkdir()
    pdf = write_text_pdf(docs / "handbook.pdf", ["Welcome aboard", "Expense reports are due on Friday",
                                                 "Parking is on level minus two"])
    ix = str(tmp_path / "ix")
    assert main(["index", str(docs), "--model", "imgrag-tiny-clip", "--index", ix, "--workers", "0",
                 "--dpi", "72", "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "documents: 1 PDFs, 3 pages" in out
    assert main(["search", "expense reports", "--mode", "text", "--index", ix, "-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(f"{pdf} (page 2)") and out[1].strip() == "Expense reports are due on Friday"
    import json

    assert main(["search", "parking level", "--mode", "hybrid", "--index", ix, "--json", "-k", "3"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res[0]["page"] == 3 and res[0]["path"] == str(pdf) and res[0]["rank_text"] == 1
    assert "Parking" in res[0]["snippet"]
    assert main(["search", "a + b", "--mode", "text", "--index", ix]) == 2
    assert "needs a plain text query" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# layout-preserving views
# ------------------------------------------------------------------------------------------------
def test_pad_to_square_keeps_the_whole_page_through_the_models_crop():
    page = Image.new("RGB", (100, 140), "white")
    ImageDraw.Draw(page).rectangle((0, 0, 99, 9), fill="black")  # a header band at the very top
    sq = pad_to_square(page, crop_fraction=224 / 256)
    assert sq.size[0] == sq.size[1] == 160  # ceil(140 / 0.875)
    keep = round(160 * 224 / 256)
    off = (160 - keep) // 2
    inner = np.asarray(sq.crop((off, off, off + keep, off + keep)))
    assert (inner == 0).all(axis=2).sum() == 100 * 10  # the header survives the centre crop whole
    assert (np.asarray(sq) == 0).all(axis=2).sum() == 100 * 10


def test_tiles_cover_tall_pages_and_pool():
    assert tile_boxes(1240, 1754, max_tiles=2) == [(0, 0, 1240, 1240), (0, 514, 1240, 1754)]
    assert tile_boxes(1000, 3500, max_tiles=3) == [(0, 0, 1000, 1000), (0, 1250, 1000, 2250), (0, 2500, 1000, 3500)]
    assert tile_boxes(1754, 1240, max_tiles=2)[1] == (514, 0, 1754, 1240)  # landscape: along the width
    assert tile_boxes(1000, 1100) == [] and tile_boxes(1240, 1754, max_tiles=0) == []
    views = page_views(Image.new("RGB", (1240, 1754), "white"), max_tiles=2)
    assert [v.size for v in views] == [(1754, 1754), (1240, 1240), (1240, 1240)]
    v = np.asarray([[1, 0], [0, 1], [3, 4], [1, 0]], dtype=np.float32)
    pooled, owners = pool_views(v, [0, 0, 1, 2])
    assert owners == [0, 1, 2]
    assert np.allclose(pooled, [[2 ** -0.5, 2 ** -0.5], [0.6, 0.8], [1, 0]])


def test_page_vector_is_the_mean_of_its_views(tmp_path):
    from fakes import ThumbTransform

    docs = tmp_path / "docs"
    docs.mkdir()
    pdf = write_text_pdf(docs / "p.pdf", ["x"], fills=[(200, 30, 30)])
    emb = FakeEmbedder()
    idx = make_index(tmp_path, emb=emb)
    build_index(idx, [docs], IndexOptions(dpi=50, page_tiles=2, **OPTS))
    stored = np.asarray(rows_of(idx)[f"{pdf}#page=1"]["vector"], dtype=np.float32)
    import pypdfium2 as pdfium
    import torch

    from imgrag.retrieval.pdf import render_page

    img = render_page(pdfium.PdfDocument(str(pdf)), 1, dpi=50)
    views = page_views(img, 1.0, 2)
    assert len(views) == 3
    vecs = emb.embed_pixels(torch.stack([ThumbTransform()(v) for v in views]))
    ref = vecs.mean(axis=0)
    ref /= np.linalg.norm(ref)
    assert float(stored @ ref) > 0.99999


def write_quadrant_pdf(path: Path, text: str, font_size: float = 7) -> Path:
    """An A4 page with a different colour block in each quarter and ``text`` in small type on top."""
    pdf = pdf_tools().FPDF(format="A4")
    pdf.set_auto_page_break(False)
    pdf.add_page()
    for (x, y), c in zip([(0, 0), (105, 0), (0, 148.5), (105, 148.5)],
                         [(220, 40, 40), (40, 200, 40), (40, 40, 220), (230, 200, 30)]):
        pdf.set_fill_color(*c)
        pdf.rect(x, y, 105, 148.5, style="F")
    pdf.set_font("helvetica", size=font_size)
    pdf.set_xy(10, 10)
    pdf.multi_cell(190, font_size * 0.42, text)
    pdf.output(str(path))
    return path


DENSE_TEXT = " ".join(f"word{i} alpha beta gamma delta" for i in range(180))  # ~5,000 characters
SPARSE_TEXT = "Annual report 2024\nTitle page"


def test_dense_pages_get_a_grid_of_tiles_sparse_pages_do_not():
    a4 = (1240, 1754)  # A4 at 150 dpi: 8.27 x 11.69 in = 96.7 sq in
    assert text_density("x" * 967, *a4, 150) == pytest.approx(10.0, rel=1e-3)
    assert is_dense("x" * 1500, *a4, 150) and not is_dense("x" * 1400, *a4, 150)  # threshold 15 / sq in
    assert not is_dense(" \n " * 5000, *a4, 150) and not is_dense(None, *a4, 150)
    assert DENSE_CHARS_PER_SQIN == 15.0
    boxes = grid_boxes(*a4)
    assert boxes == [(0, 0, 682, 965), (558, 0, 1240, 965), (0, 789, 682, 1754), (558, 789, 1240, 1754)]
    page = Image.new("RGB", a4, "white")
    assert [v.size for v in page_views(page, 1.0, 2, dense=True)] == [(1754, 1754)] + [(965, 965)] * 4
    assert len(page_views(page, 1.0, 2, dense=False)) == 3  # tall sparse page: 2 strips
    assert len(page_views(page, 1.0, 0, dense=True)) == 1  # --page-tiles 0: whole page only
    square = Image.new("RGB", (1000, 1000), "white")
    assert len(page_views(square, 1.0, 2, dense=True)) == 5 and len(page_views(square, 1.0, 2)) == 1
    from fakes import ThumbTransform

    pt = PageTransform(ThumbTransform(), 1.0, 2)
    assert pt(page, text="x" * 5000, dpi=150).shape[0] == 5
    assert pt(page, text=SPARSE_TEXT, dpi=150).shape[0] == 3
    assert pt(page).shape[0] == 3  # no text known: not dense


def test_dense_page_vector_is_the_mean_of_page_and_grid_views(tmp_path):
    """Indexed through the real pipeline: the dense page's stored vector is the mean of its padded page
    and four grid tiles (each quarter a different colour, so 3- and 5-view means differ)."""
    import pypdfium2 as pdfium
    import torch

    from fakes import ThumbTransform
    from imgrag.retrieval.pdf import page_text, render_page

    docs = tmp_path / "docs"
    docs.mkdir()
    dense = write_quadrant_pdf(docs / "dense.pdf", DENSE_TEXT)
    sparse = write_quadrant_pdf(docs / "sparse.pdf", SPARSE_TEXT)
    emb = FakeEmbedder()
    idx = make_index(tmp_path, emb=emb)
    build_index(idx, [docs], IndexOptions(dpi=50, page_tiles=2, **OPTS))
    rows = rows_of(idx)
    for pdf, n_views in ((dense, 5), (sparse, 3)):
        doc = pdfium.PdfDocument(str(pdf))
        img, text = render_page(doc, 1, dpi=50), page_text(doc, 1)
        assert is_dense(text, img.width, img.height, 50) == (n_views == 5)
        stored = np.asarray(rows[f"{pdf}#page=1"]["vector"], dtype=np.float32)
        sims = {}
        for d in (True, False):
            views = page_views(img, 1.0, 2, dense=d)
            vecs = emb.embed_pixels(torch.stack([ThumbTransform()(v) for v in views]))
            ref = vecs.mean(axis=0)
            sims[len(views)] = float(stored @ (ref / np.linalg.norm(ref)))
        assert sims[n_views] > 0.99999, sims  # mean pooling of exactly these views
        other = 3 if n_views == 5 else 5
        assert sims[other] < 0.9999, sims  # and not of the other view set


# ------------------------------------------------------------------------------------------------
# a 500-page PDF with bounded memory
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_500_page_pdf_indexes_with_bounded_memory(tmp_path):
    """Rendering every page at 150 dpi at once would need 500 × 6.5 MB ≈ 3.3 GB (plus 3 views each);
    pages are rendered lazily, one batch at a time, so the whole run stays far below that."""
    docs = tmp_path / "docs"
    docs.mkdir()
    write_text_pdf(docs / "big.pdf", [f"page {i}: " + "lorem ipsum dolor sit amet " * 40 for i in range(1, 501)])
    script = textwrap.dedent(f"""
        import resource, sys, json
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from fakes import FakeEmbedder
        from imgrag.indexer.pipeline import IndexOptions, build_index
        from imgrag.retrieval.index import Index
        idx = Index.create_or_open({str(tmp_path / 'idx')!r}, FakeEmbedder(), store="lancedb")
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rep = build_index(idx, [{str(docs)!r}], IndexOptions(workers=0, batch_size=16, dpi=150, page_tiles=2))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"rows": idx.store.count(), "embedded": rep.embedded, "base_kb": base, "peak_kb": peak,
                           "hit": idx.store.text_search("page 377", 1)[0].row["page"]}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(r)
    assert r["rows"] == 500 and r["embedded"] == 500
    assert r["hit"] == 377
    grown_mb = (r["peak_kb"] - r["base_kb"]) / 1024
    assert grown_mb < 1200, f"memory grew by {grown_mb:.0f} MB while indexing 500 pages"


# ------------------------------------------------------------------------------------------------
# answers from document pages
# ------------------------------------------------------------------------------------------------
def test_answer_sends_page_text_as_data_and_cites_document_and_page(tmp_path):
    from imgrag.retrieval.generators.base import EvidenceItem, Generator
    from imgrag.retrieval.queries.answer import answer

    class Recorder(Generator):
        name = "recorder"
        max_images = 4
        image_size = 256

        def __init__(self):
            self.items: list[EvidenceItem] = []

        def stream(self, question, items):
            self.items = list(items)
            n = next(it.n for it in items if "Friday" in it.facts.get("page text", ""))
            yield f"Expense reports are due on Friday [{n}]."

    docs = tmp_path / "docs"
    docs.mkdir()
    filler = "General information about the company and its history. " * 30
    pdf = write_text_pdf(docs / "handbook.pdf", ["Welcome aboard. " + filler,
                                                 filler + " Expense reports are due on Friday at noon.",
                                                 "Parking is on level minus two. " + filler])
    idx = make_index(tmp_path)
    build_index(idx, [docs], IndexOptions(**OPTS))
    gen = Recorder()
    stream = answer(idx, "When are expense reports due?", k=3, generator=gen)
    assert stream.text().startswith("Expense reports are due on Friday")
    res = stream.result
    assert not res.no_answer  # the fake embedder's cosine is low, but the question's words occur on a page
    assert [(c.path, c.page) for c in res.citations] == [(str(pdf), 2)]
    first = gen.items[0]
    assert first.page == 2 and first.facts["file"] == "handbook.pdf" and first.facts["page"] == "2"
    # the excerpt around the question's words reaches the model (not just the page's first lines)
    assert "Expense reports are due on Friday at noon" in first.facts["page text"]
    assert first.image is not None and max(first.image.size) == 256  # the rendered page itself
    assert any("keyword" in n for n in res.notes)


def test_ui_backend_search_uses_hybrid_for_documents_and_shows_page_and_snippet(tmp_path):
    from imgrag.app.web.backend import Backend, UIConfig

    docs = tmp_path / "docs"
    docs.mkdir()
    pdf = write_text_pdf(docs / "guide.pdf", ["Introduction", "Cormorants nest on the sea cliffs", "Index"])
    idx = make_index(tmp_path)
    build_index(idx, [docs], IndexOptions(**OPTS))
    be = Backend(UIConfig(index_root=idx.root, thumb_dir=tmp_path / "thumbs", index_workers=0), index=idx)
    items = be.search_text("cormorants cliffs", k=3)
    top = items[0]
    assert (top.path, top.page) == (str(pdf), 2)
    assert top.snippet == "Cormorants nest on the sea cliffs"
    assert "guide.pdf p.2" in top.caption and top.caption.endswith("Cormorants nest on the sea cliffs")
    assert Path(top.thumb).exists()  # a rendered thumbnail of the page
    from imgrag.app.web.html import matches_html

    d = top.to_dict()
    assert d["match_spans"] == [[0, 10], [27, 33]]
    m = matches_html([it.to_dict() for it in items])
    assert "1. guide.pdf · page 2</span>" in m
    assert "<mark>Cormorants</mark> nest on the sea <mark>cliffs</mark>" in m
    # the Search tab's handler fills the #search-matches panel with the same list
    from imgrag.app.web.layout import build_blocks

    demo = build_blocks(be)
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    handler = next(f for f in fns if getattr(f, "api_name", None) == "search")
    out = handler.fn("cormorants cliffs", 3, 0.0, False, "", "", "", "", "")  # no label / type filter
    assert len(out) == len(handler.outputs)
    panel = out[[getattr(o, "elem_id", None) for o in handler.outputs].index("search-matches")]
    assert "<mark>Cormorants</mark> nest on the sea <mark>cliffs</mark>" in panel and "page 2" in panel


def test_vector_gate_keeps_a_noise_ranking_out_of_the_fusion():
    from types import SimpleNamespace

    from imgrag.retrieval.queries.hybrid import fuse, hybrid_defaults, vector_informative

    def hits(ids, scores):
        return [Hit(i, i, s, {}) for i, s in zip(ids, scores)]
    flat = hits(["x", "b", "y", "z"], [0.16, 0.15, 0.15, 0.14])  # nothing stands out: gap 0.01
    sharp = hits(["b", "x", "y", "z"], [0.45, 0.20, 0.19, 0.18])  # gap 0.255
    assert not vector_informative(flat, 0.10) and vector_informative(sharp, 0.10)
    assert vector_informative(flat, 0.0)  # gate 0: always fused
    txt = hits(["a", "b", "c"], [9.0, 8.0, 7.0])
    lite = SimpleNamespace(manifest=SimpleNamespace(model="lite"))
    other = SimpleNamespace(manifest=SimpleNamespace(model="ViT-B-32:laion2b_s34b_b79k"))
    assert hybrid_defaults("lite") == ((0.5, 1.0), 0.10) and hybrid_defaults("ViT-B-32") == ((1.0, 1.0), 0.0)
    assert [h.id for h in fuse(lite, flat, txt)][:3] == ["a", "b", "c"]  # noise ignored: text order
    assert [h.id for h in fuse(other, flat, txt)][0] == "b"  # plain RRF: in both lists → first
    assert [h.id for h in fuse(lite, sharp, txt)][0] == "b"  # a confident vector match is fused
    assert [h.id for h in fuse(lite, flat, txt, vector_gate=0.0)][0] == "b"


def test_pages_render_safely_from_many_threads(tmp_path):
    """PDFium is not thread-safe; the web UI renders thumbnails from a thread pool while answers and an
    in-process indexer render too. All go through one lock: many threads, same results, no crash."""
    from concurrent.futures import ThreadPoolExecutor

    from imgrag.retrieval.pdf import render_to_fit

    pdf = write_text_pdf(tmp_path / "t.pdf", [f"page {i}" for i in range(1, 9)], fills=[(i * 30, 0, 0) for i in range(8)])
    data = pdf.read_bytes()

    def job(i):
        src = str(pdf) if i % 2 else data
        im = render_to_fit(src, i % 8 + 1, 96)
        return im.size, np.asarray(im)[0, 0].tolist()
    with ThreadPoolExecutor(8) as ex:
        out = list(ex.map(job, range(64)))
    assert all(size == (68, 96) for size, _ in out)
    assert all(px == [(i % 8) * 30, 0, 0] for i, (_, px) in enumerate(out))


def test_pdfs_without_pypdfium2_are_skipped_saying_what_to_install(tmp_path, monkeypatch):
    import builtins

    docs = tmp_path / "docs"
    docs.mkdir()
    write_text_pdf(docs / "a.pdf", ["hello"])
    Image.new("RGB", (32, 32), "red").save(docs / "photo.png")
    real_import = builtins.__import__

    def no_pdfium(name, *a, **kw):
        if name == "pypdfium2" or name.startswith("pypdfium2."):
            raise ImportError("No module named 'pypdfium2'")
        return real_import(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_pdfium)
    idx = make_index(tmp_path)
    rep = build_index(idx, [docs], IndexOptions(**OPTS))
    assert rep.embedded == 1 and set(rows_of(idx)) == {str(docs / "photo.png")}
    assert [s["reason"] for s in idx.skipped()] == [
        "PDF support is not installed: pip install 'imgrag[docs]' (pypdfium2), then re-run with --retry-skipped"]
    monkeypatch.setattr(builtins, "__import__", real_import)
    rep = build_index(idx, [docs], IndexOptions(retry_skipped=True, **OPTS))
    assert rep.embedded == 1 and f"{docs / 'a.pdf'}#page=1" in rows_of(idx) and idx.skipped() == []
