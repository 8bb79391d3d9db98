"""The functions behind each web UI tab, called directly (no server, no browser).

A real LanceDB index built by the real pipeline with the deterministic fake embedder (colour semantics:
the text "red" is nearest to red images), so these run in seconds.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakes import FakeEmbedder
from imgrag.app.web.backend import Backend, UIConfig, make_filters
from imgrag.app.web.files import NotServable, image_mime, load_upload, read_indexed
from imgrag.app.web.jobs import JobStatus, format_eta
from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.retrieval.errors import BadQueryError, ImgragError
from imgrag.retrieval.index import Index
from ui_support import XSS_NAME, exif_date

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 30), "blue": (20, 30, 220), "white": (250, 250, 250),
           "black": (5, 5, 5)}


def _img(rgb, size=(64, 48)):
    arr = np.zeros((size[1], size[0], 3), np.uint8) + np.asarray(rgb, np.uint8)
    arr[::7, ::5] = 128  # a little texture
    return Image.fromarray(arr)


@pytest.fixture
def corpus(tmp_path) -> Path:
    d = tmp_path / "photos"
    (d / "2019").mkdir(parents=True)
    (d / "2021").mkdir()
    _img(COLOURS["red"]).save(d / "red.png")
    _img(COLOURS["green"]).save(d / "green.png")
    _img(COLOURS["blue"]).save(d / "2019" / "blue.jpg", quality=95, exif=exif_date("2019:03:01 09:00:00"))
    _img((30, 40, 200)).save(d / "2021" / "blue2.jpg", quality=95, exif=exif_date("2021:06:01 09:00:00"))
    _img(COLOURS["white"]).save(d / XSS_NAME)
    (d / "notes.jpg").write_text("not an image")
    return d


@pytest.fixture
def backend(tmp_path, corpus) -> Backend:
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder())
    build_index(idx, [corpus], IndexOptions(workers=0, batch_size=4))
    return Backend(UIConfig(index_root=idx.root, thumb_dir=tmp_path / "thumbs", index_workers=0), index=idx)


def names(items):
    return [it.name for it in items]


# ------------------------------------------------------------------------------------------------ search
def test_text_search_ranks_by_meaning_with_thumbnails(backend):
    items = backend.search_text("red", k=3)
    assert len(items) == 3 and items[0].name == "red.png"
    assert items[0].score > items[1].score >= items[2].score
    for it in items:  # a real, small JPEG thumbnail per result, never the original file
        th = Path(it.thumb)
        assert th.is_file() and th.parent.parent == backend.thumbs.root
        with Image.open(th) as im:
            assert im.format == "JPEG" and max(im.size) <= 320
    assert "red.png" in items[0].caption and f"{items[0].score:.3f}" in items[0].caption


def test_filters_cutoff_and_sort_by_date(backend):
    blues = backend.search_text("blue", k=5, path_glob="*/20*/*")
    assert sorted(names(blues)) == ["blue.jpg", "blue2.jpg"]
    assert names(backend.search_text("blue", k=5, after="2020-01-01")) == ["blue2.jpg"]
    assert names(backend.search_text("blue", k=5, before="2020-01-01")) == ["blue.jpg"]
    by_score = backend.search_text("blue", k=5)
    cut = by_score[1].score
    kept = backend.search_text("blue", k=5, min_score=cut)
    assert all(it.score >= cut for it in kept) and len(kept) == 2
    # sort by date applies after the cutoff: the same survivors, oldest first, undated last
    dated = backend.search_text("blue", k=5, min_score=cut, sort_by_date=True)
    assert sorted(names(dated)) == sorted(names(kept))
    assert names(dated) == ["blue.jpg", "blue2.jpg"]
    assert dated[0].taken_at.year == 2019 and "2019-03-01" in dated[0].caption
    allsorted = backend.search_text("blue", k=5, sort_by_date=True)
    assert [it.taken_at is None for it in allsorted] == [False, False, True, True, True]


def test_bad_search_input_gives_readable_errors(backend):
    with pytest.raises(BadQueryError, match="type what you are looking for"):
        backend.search_text("   ")
    with pytest.raises(BadQueryError, match="not a date"):
        backend.search_text("red", after="last tuesday")
    with pytest.raises(BadQueryError, match="later than"):
        make_filters(after="2022-01-01", before="2021-01-01")
    with pytest.raises(BadQueryError, match="between 1 and"):
        backend.search_text("red", k=0)


def test_query_image_terms_must_name_indexed_images(backend, corpus, tmp_path):
    # an existing non-indexed file and a missing file give the same refusal (no file-existence oracle)
    outside = tmp_path / "outside.png"
    _img(COLOURS["red"]).save(outside)
    msgs = set()
    for q in (f"image:{outside}", "image:/etc/passwd", "image:/no/such/file.png", f"red + image:{outside}"):
        with pytest.raises(BadQueryError) as e:
            backend.search_text(q)
        msgs.add(str(e.value))
    assert len(msgs) == 1 and "indexed image" in msgs.pop()
    # an indexed image is fine: its stored vector is used and it is excluded from its own results
    inside = str((corpus / "red.png").resolve())
    items = backend.search_text(f"image:{inside}", k=4)
    assert "red.png" not in names(items) and len(items) == 4


def test_more_like_this_excludes_the_item_and_refuses_unknown_ids(backend, corpus):
    blue = str((corpus / "2019" / "blue.jpg").resolve())
    items = backend.more_like(blue, k=3)
    assert items[0].name == "blue2.jpg" and "blue.jpg" not in names(items)
    with pytest.raises(BadQueryError, match="no longer in the index"):
        backend.more_like("/etc/passwd")


def test_search_by_uploaded_image(backend, tmp_path):
    up = tmp_path / "query.png"
    _img((200, 30, 25)).save(up)
    items = backend.search_image(str(up), k=2)
    assert items[0].name == "red.png"
    with pytest.raises(BadQueryError, match="upload, paste or drop"):
        backend.search_image(None)


# ------------------------------------------------------------------------------------------------ uploads
def _png_with_declared_size(w: int, h: int) -> bytes:
    """A tiny valid PNG whose header declares w×h pixels (a decompression bomb's header)."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_uploads_over_limits_are_refused_before_decoding(tmp_path, monkeypatch):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + os.urandom(3000))
    with pytest.raises(BadQueryError, match=r"upload too large: .* MB limit"):
        load_upload(big, max_bytes=2000)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_with_declared_size(40000, 40000))  # 1.6 gigapixels declared, 100 bytes on disk
    # the pixel data is never decoded: fail loudly if Pillow's decoder is reached at all
    from PIL import ImageFile

    def no_load(self, *a, **k):
        raise AssertionError("decoder reached for an over-limit image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    with pytest.raises(BadQueryError, match=r"upload refused: image too large: .*MP"):
        load_upload(bomb, max_pixels=50_000_000)
    mid = tmp_path / "mid.png"
    mid.write_bytes(_png_with_declared_size(10000, 6000))  # 60 MP: under Pillow's limits, over ours
    with pytest.raises(BadQueryError, match=r"60 MP > 50 MP limit"):
        load_upload(mid, max_pixels=50_000_000)
    txt = tmp_path / "x.png"
    txt.write_text("hello")
    monkeypatch.undo()
    with pytest.raises(BadQueryError, match="not an image"):
        load_upload(txt)


# ------------------------------------------------------------------------------------------------ serving
@pytest.mark.parametrize("bad", ["/etc/passwd", "../../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd",
                                 "' OR '1'='1", "%00", "", "x" * 10000, "red.png"])
def test_only_indexed_ids_are_servable(backend, bad):
    with pytest.raises(NotServable):
        backend.original(bad)
    with pytest.raises(NotServable):
        backend.thumbnail(bad)


def test_originals_are_served_only_while_unchanged(backend, corpus, tmp_path):
    red = str((corpus / "red.png").resolve())
    data, mime, name = backend.original(red)
    assert data == (corpus / "red.png").read_bytes() and mime == "image/png" and name == "red.png"
    # swapped for a symlink to a file outside the collection: refused (the bytes no longer match)
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    os.replace(corpus / "red.png", tmp_path / "red-moved.png")
    os.symlink(secret, corpus / "red.png")
    with pytest.raises(NotServable, match="changed since it was indexed"):
        backend.original(red)
    # a FIFO in its place: refused without blocking
    os.unlink(corpus / "red.png")
    os.mkfifo(corpus / "red.png")
    with pytest.raises(NotServable, match="not a regular file"):
        backend.original(red)
    os.unlink(corpus / "red.png")
    with pytest.raises(NotServable, match="no longer readable"):
        backend.original(red)
    # a symlink to a *different image* with the same size is still refused (hash check)
    same_size = tmp_path / "same.png"
    raw = bytearray((tmp_path / "red-moved.png").read_bytes())
    raw[-20] ^= 0xFF
    same_size.write_bytes(bytes(raw))
    os.symlink(same_size, corpus / "red.png")
    with pytest.raises(NotServable):
        read_indexed(backend.row(red))
    # in a gallery an unreadable item gets the placeholder thumbnail; the thumbnail route refuses it
    assert backend.thumbs.get(backend.row(red)) == backend.thumbs.placeholder()
    with pytest.raises(NotServable):
        backend.thumbnail(red)


def test_thumbnail_cache_is_bounded(backend):
    items = backend.search_text("red", k=5)
    assert len({it.thumb for it in items}) == 5
    assert backend.thumbs.prune(max_files=10) == 0
    assert backend.thumbs.prune(max_files=2) == 3
    assert len(list(backend.thumbs.root.glob("??/*.jpg"))) == 2
    again = backend.search_text("red", k=5)  # regenerated on demand
    assert all(Path(it.thumb).is_file() for it in again)


def test_image_mime_sniffing():
    assert image_mime(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert image_mime(b"\x89PNG\r\n\x1a\nxxxx") == "image/png"
    assert image_mime(b"<html>") is None and image_mime(b"root:x:0:0") is None


# ------------------------------------------------------------------------------------------------ classify
def test_classify_upload_and_results(backend, tmp_path):
    up = tmp_path / "green.png"
    _img((25, 210, 30)).save(up)
    probs = backend.classify_upload(str(up), "red\ngreen\nblue", "{}")
    assert list(probs)[0] == "green" and abs(sum(probs.values()) - 1) < 1e-5
    items = backend.search_text("blue", k=2)
    rows = backend.classify_ids([it.id for it in items], "red\ngreen\nblue", "{}\n{}")
    assert [r["label"] for r in rows] == ["blue", "blue"]
    with pytest.raises(BadQueryError, match="at least two labels"):
        backend.classify_upload(str(up), "red", "{}")
    with pytest.raises(BadQueryError, match="exactly once"):
        backend.classify_upload(str(up), "red\nblue", "a photo of")
    with pytest.raises(BadQueryError, match="run a search first"):
        backend.classify_ids([], "red\nblue", "{}")
    # the same labels/templates reuse one classifier (class vectors computed once)
    assert backend.classifier("red\ngreen", "{}") is backend.classifier("red\ngreen", "{}")


def test_classify_whole_index_in_background_writes_labels(backend, corpus):
    st = backend.start_classify_index("red\ngreen\nblue\nwhite", "{}", write=True)
    st = backend.jobs.wait(60)
    assert st.state == "done", st.message
    assert st.done == st.total == 5 and "wrote their labels" in st.message
    blue = backend.search_text("blue", k=5, label="blue")
    assert sorted(names(blue)) == ["blue.jpg", "blue2.jpg"]
    assert backend.row(str((corpus / "red.png").resolve()))["label"] == "red"


# ------------------------------------------------------------------------------------------------ index
def test_index_a_folder_in_background_and_list_skips(backend, tmp_path):
    more = tmp_path / "more"
    more.mkdir()
    for i in range(6):
        _img((40 * i, 100, 255 - 40 * i)).save(more / f"m{i}.png")
    (more / "empty.png").write_bytes(b"")
    before = backend.info()["items"]
    st = backend.start_indexing(str(more))
    with pytest.raises(ImgragError, match="already running"):
        backend.start_indexing(str(more))
    st = backend.jobs.wait(120)
    assert st.state == "done", st.message
    assert backend.info()["items"] == before + 6
    assert st.done == st.total == 7 and "indexed 6 new" in st.message
    reasons = {Path(r["path"]).name: r["reason"] for r in backend.skipped()}
    assert reasons["empty.png"] == "zero-byte file" and "not an image" in reasons["notes.jpg"]
    # searching works on the new items right away (same process, same store)
    assert any(it.name.startswith("m") for it in backend.search_text("blue", k=10))


def test_search_answers_while_an_indexing_job_is_running(tmp_path, corpus):
    """The UI stays responsive: indexing runs in a background thread; searching does not wait for it."""
    import threading

    gate, entered = threading.Event(), threading.Event()

    class GatedEmbedder(FakeEmbedder):
        def embed_pixels(self, pixels):
            entered.set()
            assert gate.wait(60)  # hold the indexer mid-run until the test lets it go
            return super().embed_pixels(pixels)

    idx = Index.create_or_open(tmp_path / "idx2", GatedEmbedder())
    gate.set()
    build_index(idx, [corpus], IndexOptions(workers=0, batch_size=4))
    gate.clear()
    b = Backend(UIConfig(index_root=idx.root, thumb_dir=tmp_path / "thumbs2", index_workers=0), index=idx)
    more = tmp_path / "more2"
    more.mkdir()
    for i in range(3):
        _img((200, 10 * i, 10)).save(more / f"r{i}.png")
    b.start_indexing(str(more))
    assert entered.wait(60)
    try:
        assert b.jobs.status.state == "running"
        items = b.search_text("red", k=2)  # answered while the indexer is blocked mid-batch
        assert items[0].name == "red.png" and b.jobs.status.state == "running"
    finally:
        gate.set()
    assert b.jobs.wait(60).state == "done"
    assert b.info()["items"] == 8


def test_a_server_without_an_index_creates_one_from_the_index_tab(tmp_path, corpus, tiny_model_configs):
    b = Backend(UIConfig(index_root=tmp_path / "fresh", thumb_dir=tmp_path / "t3", index_workers=0,
                         new_index_model="imgrag-tiny-clip", device="cpu", precision="fp32"))
    assert not b.has_index()
    with pytest.raises(ImgragError, match="no imgrag index at"):
        b.search_text("red")
    b.start_indexing(str(corpus))
    st = b.jobs.wait(300)
    assert st.state == "done", st.message
    assert b.has_index() and b.info()["items"] == 5 and b.info()["model"] == "imgrag-tiny-clip"
    assert len(b.search_text("red", k=3)) == 3


@pytest.mark.parametrize("folder,msg", [("", "type the path"), ("relative/dir", "absolute"),
                                        ("/no/such/folder", "not found")])
def test_index_folder_errors(backend, folder, msg):
    with pytest.raises(BadQueryError, match=msg):
        backend.start_indexing(folder)


def test_job_progress_numbers():
    st = JobStatus(kind="index", state="running", done=50, total=200, started=1.0)
    st.finished = 11.0  # 10 s elapsed
    assert st.rate == pytest.approx(5.0) and st.fraction == 0.25
    assert st.eta_s == pytest.approx(30.0)
    assert format_eta(30) == "30s" and format_eta(125) == "2m05s" and format_eta(None) == "–"


# ------------------------------------------------------------------------------------------------ ask
class _CitingGenerator:
    """Stands in for a model: streams an answer citing the first evidence item (records what it saw)."""

    name = "test:citing"
    text_only = True
    max_images = 4
    image_size = None

    def __init__(self):
        self.seen = None

    def stream(self, question, items):
        self.seen = (question, [it.path for it in items])
        yield "It is "
        yield f"{Path(items[0].path).stem} [1]."


def test_ask_streams_and_cites(backend):
    pytest.importorskip("imgrag.retrieval.queries.answer")
    from imgrag.retrieval.generators.base import Generator

    gen = type("G", (_CitingGenerator, Generator), {})()
    backend.config.generator = gen
    out = list(backend.ask("red", k=3, max_images=2, min_score=-1.0))
    chunks = [v for kind, v in out if kind == "chunk"]
    kind, res = out[-1]
    assert kind == "result" and chunks == ["It is ", "red [1]."]
    assert res.generator == "test:citing" and res.text_only is True and not res.no_answer
    assert [c.n for c in res.citations] == [1] and Path(res.citations[0].path).name == "red.png"
    assert gen.seen[0] == "red" and len(gen.seen[1]) == 2  # max_images respected
    # the relevance guard: nothing matches well enough → no model call, a "no answer" result
    gen.seen = None
    *_, (kind, res) = backend.ask("red", k=3, min_score=1.5)
    assert res.no_answer and gen.seen is None and not res.citations
    with pytest.raises(BadQueryError):
        list(backend.ask("  "))


# ------------------------------------------------------------------------------------------------ UI helpers
def test_html_helpers_escape_untrusted_text():
    from imgrag.app.web.html import detail_html, error_text, job_html, skipped_html, status_html

    item = {"id": f"/p/{XSS_NAME}", "path": f"/p/{XSS_NAME}", "name": XSS_NAME, "score": 0.5, "label": "<b>x</b>"}
    h = detail_html(item)
    assert "<img" not in h and "&lt;img src=x onerror=" in h and "&lt;b&gt;x&lt;/b&gt;" in h
    assert "/imgrag/image?id=%2Fp%2F%3Cimg" in h
    assert "<img" not in skipped_html([{"path": XSS_NAME, "reason": "<script>"}])
    assert "<script>" not in status_html("<script>alert(1)</script>", True)
    st = JobStatus(kind="index", state="failed", title="<i>t</i>", message="<svg onload=x>")
    assert "<svg" not in job_html(st) and "<i>" not in job_html(st)
    try:
        {}["missing"]
    except KeyError as e:
        msg = error_text(e)
    assert msg.startswith("internal error: KeyError") and "Traceback" not in msg and "\n" not in msg
    assert error_text(BadQueryError("bad query")) == "bad query"


def test_snippet_highlight_is_escaped_and_marks_only_the_query_words():
    from imgrag.app.web.html import detail_html, matches_html, snippet_html

    snip = "Cormorants <img src=x onerror=alert(1)> nest & breed on cliffs"
    spans = [(0, 10), (snip.index("cliffs"), len(snip))]  # "Cormorants", "cliffs"
    h = snippet_html(snip, spans)
    assert h == ("<mark>Cormorants</mark> &lt;img src=x onerror=alert(1)&gt; nest &amp; breed on "
                 "<mark>cliffs</mark>")
    assert snippet_html(snip, [(5, 3), (0, 999), ("a", 2), (1, 2, 3)]) == snippet_html(snip)  # bad spans ignored
    assert "<mark>" not in snippet_html(snip) and "<img" not in snippet_html(snip)
    items = [{"id": "/d/a.pdf#page=2", "path": "/d/a.pdf", "name": "<b>guide</b>.pdf", "score": 0.03, "page": 2,
              "snippet": snip, "match_spans": [list(sp) for sp in spans]},
             {"id": "/p/cat.jpg", "path": "/p/cat.jpg", "name": "cat.jpg", "score": 0.02, "page": None, "snippet": ""}]
    m = matches_html(items)
    assert "1. &lt;b&gt;guide&lt;/b&gt;.pdf · page 2</span>" in m and m.count("<li") == 1  # photos: no row
    assert "<mark>Cormorants</mark>" in m and "<img" not in m and "<b>guide" not in m
    assert matches_html(items[1:]) == ""
    d = detail_html(items[0])
    assert "<mark>cliffs</mark>" in d and "<img" not in d and "<th>page</th><td>2</td>" in d
