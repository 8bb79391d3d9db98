"""Every file name: names that are not valid UTF-8 (Latin-1, Shift-JIS, invalid byte sequences) are indexed,
searchable, shown escaped (CLI text, --json, UI) and served by the UI; change, rename and delete work on them.

The path forms are those of :mod:`imgrag.retrieval.paths`: stored (NUL + two hex digits per undecodable
byte, identity on valid UTF-8), file-system (surrogateescape) and display (``\\xe9``).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from fakes import FakeEmbedder
from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.indexer.scan import is_under, normalize_roots, scan
from imgrag.retrieval.index import Index
from imgrag.retrieval.paths import (display, from_display, is_escaped, is_stored_form, to_bytes, to_fs,
                                    to_stored)
from reliability import all_rows

# name bytes → colour of the image saved under it (the fake embedder's text "red" finds red images)
LATIN1 = "café-été.png".encode("latin-1")
SJIS = "写真-日本.png".encode("shift_jis")
INVALID = b"bad-\xff\xfe-\xc3(-\xed\xa0\x80.png"  # 0xff/0xfe never occur in UTF-8; a broken pair; a surrogate
NAMES: dict[bytes, tuple[int, int, int]] = {
    LATIN1: (220, 20, 20),  # red
    SJIS: (20, 200, 30),  # green
    INVALID: (20, 30, 220),  # blue
    "naïve-ok.png".encode(): (250, 250, 250),  # white: valid UTF-8, kept exactly as it is
    b"back\\x41slash.png": (5, 5, 5),  # black: a valid name that looks like an escape
}
OPTS = IndexOptions(workers=0, batch_size=2)


# ------------------------------------------------------------------------------------------------
# the path forms
# ------------------------------------------------------------------------------------------------
def _random_names(n: int, seed: int = 0) -> list[bytes]:
    """Byte strings without ``/`` and NUL: random bytes, UTF-8 text, fragments of multi-byte sequences,
    escape look-alikes, and mixes of them."""
    rng = random.Random(seed)
    pieces = [b"\\", b"\\x", b"\\xe9", b"x00", b"e9", b"\xc3", b"\xa9", b"\xe2\x82", b"\xf0\x9f\x98", b"\xed\xa0\x80",
              "é".encode(), "日本".encode(), "日本".encode("shift_jis"), "é".encode("latin-1"), b"#page=1", b".png"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 8)):
            r = rng.random()
            if r < 0.4:
                parts.append(bytes(rng.choice([b for b in range(1, 256) if b != 0x2F]) for _ in range(rng.randint(1, 6))))
            elif r < 0.6:
                parts.append("".join(chr(rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF),
                                                     rng.randint(0x10000, 0x1F6FF)]))
                                     for _ in range(rng.randint(1, 4))).replace("/", "-").encode())
            else:
                parts.append(rng.choice(pieces))
        out.append(b"".join(parts))
    return out


def test_round_trip_injective_and_identity_on_utf8():
    names = _random_names(20_000) + list(NAMES)
    stored_of: dict[str, bytes] = {}
    for b in names:
        s = to_stored(b)
        s.encode("utf-8")  # valid UTF-8 (Arrow/Lance/Parquet/JSON can hold it)
        assert to_bytes(s) == b and os.fsencode(to_fs(s)) == b
        assert to_stored(os.fsdecode(b)) == s  # same from the file-system form
        assert to_stored(s) == s and is_stored_form(s)  # idempotent
        assert stored_of.setdefault(s, b) == b, f"{b!r} and {stored_of[s]!r} share the stored form {s!r}"
        try:
            text = b.decode("utf-8")
        except UnicodeDecodeError:
            assert is_escaped(s)
        else:
            assert s == text and not is_escaped(s)  # every valid UTF-8 name keeps exactly its form
        shown = display(s)
        assert shown.isprintable() and from_display(shown) == s
    shown_all = [display(s) for s in stored_of]
    assert len(set(shown_all)) == len(shown_all)  # the display form is unambiguous too
    assert sum(map(is_escaped, stored_of)) > 5_000  # the property was tried on plenty of bad names


def test_forms_by_example():
    assert to_stored(b"/p/caf\xe9.png") == "/p/caf\x00e9.png"
    assert display("/p/caf\x00e9.png") == "/p/caf\\xe9.png"
    assert display(r"/p/back\xe9.png") == r"/p/back\\xe9.png"  # a real backslash is doubled: no collision
    assert display("/p/a\x1bb\u0085.png") == "/p/a\\x1bb\\u0085.png"
    assert display("/p/caf\udce9.png") == "/p/caf\\xe9.png"  # a file-system form is shown the same way
    # a folder's stored form is a prefix of its files' (roots, pruning)
    root = to_stored(b"/p/d\xe9j\xe0")
    assert is_under(to_stored(b"/p/d\xe9j\xe0/x.png"), [root]) and not is_under(to_stored(b"/p/d\xe9j\xe0x.png"), [root])
    # forged or non-canonical forms are refused
    for bad in ("/p/a\x00", "/p/a\x00zz", "/p/a\x0041", "/p/\x00c3\x00a9", "/p/\ud800", "/p/\udce9"):
        assert not is_stored_form(bad)
    with pytest.raises(ValueError):
        to_fs("/p/\x00c3\x00a9")  # bytes that are valid UTF-8 are never escaped
    with pytest.raises(ValueError):
        to_stored(b"/p/a\x00b")


def test_scan_and_roots_in_stored_form(tmp_path):
    base = os.fsencode(tmp_path)
    folder = os.path.join(base, b"d\xe9j\xe0")
    os.mkdir(folder)
    Image.new("RGB", (8, 8)).save(os.path.join(folder, LATIN1))
    root = normalize_roots([os.fsdecode(folder)])[0]
    assert root == to_stored(folder) and normalize_roots([root]) == [root]
    got = list(scan([root], frozenset({".png"})))
    assert [e.path for e in got] == [to_stored(os.path.join(folder, LATIN1))]


# ------------------------------------------------------------------------------------------------
# the indexer, both stores
# ------------------------------------------------------------------------------------------------
def _make_collection(coll: Path) -> dict[bytes, str]:
    """The images of NAMES in ``coll`` → {name bytes: stored id}."""
    coll.mkdir()
    base = os.fsencode(coll)
    out = {}
    for name, rgb in NAMES.items():
        Image.new("RGB", (32, 24), rgb).save(os.path.join(base, name), "PNG")
        out[name] = to_stored(os.path.join(base, name))
    return out


def _search(idx: Index, text: str, k: int = 1) -> list[str]:
    from imgrag.retrieval.queries.search import Term, search

    return [h.id for h in search(idx, [Term("text", text)], k=k)]


def _set_colour(path: str, rgb) -> None:
    fs = to_fs(path)
    st = os.stat(fs)
    Image.new("RGB", (32, 24), rgb).save(fs, "PNG")
    os.utime(fs, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # a visibly newer mtime


@pytest.mark.parametrize("store", ["lancedb", "faiss"])
def test_index_search_change_rename_delete(tmp_path, store):
    coll = tmp_path / "coll"
    ids = _make_collection(coll)
    emb = FakeEmbedder()
    idx = Index.create_or_open(tmp_path / "idx", emb, store=store)
    rep = build_index(idx, [coll], OPTS)
    assert rep.skipped == [] and rep.embedded == len(NAMES)
    rows = all_rows(idx)
    assert set(rows) == set(ids.values())
    assert ids["naïve-ok.png".encode()] == str(coll / "naïve-ok.png")  # valid names: exactly today's form
    assert ids[b"back\\x41slash.png"] == str(coll / "back\\x41slash.png")
    for name, i in ids.items():
        r = rows[i]
        assert r["path"] == i and to_bytes(r["path"]) == os.path.join(os.fsencode(coll), name)
        st = os.stat(to_fs(i))
        assert (r["size"], r["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
    # search finds them by content
    assert _search(idx, "red") == [ids[LATIN1]]
    assert _search(idx, "green") == [ids[SJIS]]
    assert _search(idx, "blue") == [ids[INVALID]]
    # a second run: nothing changes
    rep = build_index(idx, [coll], OPTS)
    assert (rep.embedded, rep.reused, rep.deleted, rep.unchanged) == (0, 0, 0, len(NAMES))

    # change: the Shift-JIS file turns red → re-embedded under the same id
    _set_colour(ids[SJIS], (230, 10, 10))
    rep = build_index(idx, [coll], OPTS)
    assert (rep.embedded, rep.reused, rep.deleted) == (1, 0, 0)
    assert set(_search(idx, "red", k=2)) == {ids[LATIN1], ids[SJIS]}
    assert _search(idx, "green") != [ids[SJIS]]
    green = np.asarray(emb.embed_texts(["green"])[0])
    assert float(np.asarray(all_rows(idx)[ids[SJIS]]["vector"]) @ green) < 0.5

    # rename (to another name that is not UTF-8): reused by content hash, the old row goes
    new_name = b"renamed-\xe9\xff.png"
    os.rename(to_fs(ids[INVALID]), os.path.join(os.fsencode(coll), new_name))
    new_id = to_stored(os.path.join(os.fsencode(coll), new_name))
    old_vec = all_rows(idx)[ids[INVALID]]["vector"]
    rep = build_index(idx, [coll], OPTS)
    assert (rep.embedded, rep.reused, rep.deleted) == (0, 1, 1)
    rows = all_rows(idx)
    assert ids[INVALID] not in rows and rows[new_id]["vector"] == old_vec
    assert _search(idx, "blue") == [new_id]

    # delete: pruned
    os.unlink(to_fs(ids[LATIN1]))
    rep = build_index(idx, [coll], OPTS)
    assert (rep.embedded, rep.deleted) == (0, 1)
    assert set(all_rows(idx)) == {ids[SJIS], new_id, ids["naïve-ok.png".encode()], ids[b"back\\x41slash.png"]}
    assert idx.skipped() == []


def test_a_root_whose_own_name_is_not_utf8(tmp_path):
    top = os.path.join(os.fsencode(tmp_path), b"card-\x82\xa0")  # Shift-JIS lead byte + a stray one
    os.mkdir(top)
    Image.new("RGB", (16, 16), (220, 20, 20)).save(os.path.join(top, LATIN1), "PNG")
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder())
    rep = build_index(idx, [os.fsdecode(top)], OPTS)  # as argv gives it
    assert rep.embedded == 1 and rep.roots == [to_stored(top)]
    os.unlink(os.path.join(top, LATIN1))
    assert build_index(idx, [os.fsdecode(top)], OPTS).deleted == 1 and idx.store.count() == 0


# ------------------------------------------------------------------------------------------------
# the CLI: text and --json show the display form; the id stays the stored key
# ------------------------------------------------------------------------------------------------
def test_cli_text_and_json_show_the_escape(tmp_path, tiny_model_configs, capsys):
    from imgrag.app.cli import main

    coll = tmp_path / "coll"
    ids = _make_collection(coll)
    broken = os.path.join(os.fsencode(coll), b"broken-\xe9.jpg")
    with open(broken, "wb") as f:
        f.write(b"not an image")
    idx = str(tmp_path / "idx")

    def run(*argv: str) -> str:
        rc = main(list(argv))
        out = capsys.readouterr()
        assert rc == 0, out.err
        assert "\x00" not in out.out and "\ufffd" not in out.out
        return out.out

    rep = json.loads(run("index", str(coll), "--index", idx, "--model", "imgrag-tiny-clip", "--workers", "0",
                         "--json"))
    assert rep["embedded"] == len(NAMES) and rep["skipped"] == 1
    hits = json.loads(run("search", "a photo", "-k", "10", "--index", idx, "--json"))
    assert sorted(h["id"] for h in hits) == sorted(ids.values())
    assert sorted(h["path"] for h in hits) == sorted(display(i) for i in ids.values())
    by_id = {h["id"]: h["path"] for h in hits}
    assert by_id[ids[LATIN1]] == f"{coll}/caf\\xe9-\\xe9t\\xe9.png"
    assert by_id[ids["naïve-ok.png".encode()]] == f"{coll}/naïve-ok.png"
    assert by_id[ids[b"back\\x41slash.png"]] == f"{coll}/back\\\\x41slash.png"
    text = run("search", "a photo", "-k", "10", "--index", idx)
    for i in ids.values():
        assert display(i) in text
    errs = json.loads(run("info", "--errors", "--index", idx, "--json"))
    assert [e["path"] for e in errs] == [f"{coll}/broken-\\xe9.jpg"]
    assert f"{coll}/broken-\\xe9.jpg: " in run("info", "--errors", "--index", idx)
    # a query image named as argv gives it (surrogateescape) is found in the index and left out of the results
    hits = json.loads(run("search", "--image", os.fsdecode(to_bytes(ids[SJIS])), "-k", "10", "--index", idx,
                          "--json"))
    assert ids[SJIS] not in {h["id"] for h in hits} and len(hits) == len(NAMES) - 1


# ------------------------------------------------------------------------------------------------
# the web UI: gallery captions, details, /imgrag/image and /imgrag/thumb
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def ui(tmp_path):
    from starlette.testclient import TestClient

    from imgrag.app.web.backend import Backend, UIConfig
    from imgrag.app.web.server import create_app

    coll = tmp_path / "coll"
    ids = _make_collection(coll)
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder())
    build_index(idx, [coll], OPTS)
    backend = Backend(UIConfig(index_root=idx.root, thumb_dir=tmp_path / "thumbs", index_workers=0), index=idx)
    with TestClient(create_app(backend)) as client:
        yield backend, client, ids, coll


def test_ui_shows_and_serves_names_that_are_not_utf8(ui):
    from imgrag.app.web.html import detail_html, gallery_value

    backend, client, ids, coll = ui
    for colour, name in (("red", LATIN1), ("green", SJIS), ("blue", INVALID)):
        items = backend.search_text(colour, k=1)
        it = items[0]
        assert it.id == ids[name] and it.name == display(to_stored(name))
        ((thumb, caption),) = gallery_value(items)
        assert it.name in caption and "\x00" not in caption
        assert Path(thumb) != backend.thumbs.placeholder()  # rendered from the file, not "unavailable"
        with Image.open(thumb) as im:  # the thumbnail shows this very image
            assert np.abs(np.asarray(im.convert("RGB"), float).mean((0, 1)) - NAMES[name]).max() < 8
        html = detail_html(it.to_dict())
        assert "\x00" not in html and html.count(it.name) == 1  # NUL never reaches the HTML
        link = f"/imgrag/image?id={quote(ids[name], safe='')}"
        assert link in html.replace("&amp;", "&")
        r = client.get(link)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content == open(to_fs(ids[name]), "rb").read()
        assert quote(display(os.path.basename(ids[name])), safe="") in r.headers["content-disposition"]
        r = client.get(f"/imgrag/thumb?id={quote(ids[name], safe='')}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    # the details page of the Latin-1 file names it with the escape
    it = backend.search_text("red", k=1)[0]
    assert "caf\\xe9-\\xe9t\\xe9.png" in detail_html(it.to_dict())


def test_ui_refuses_forged_ids(ui):
    backend, client, ids, coll = ui
    base = os.fsencode(coll)
    forged = [
        to_stored(os.path.join(base, b"caf\xe8-\xe9t\xe9.png")),  # another byte: not indexed
        to_stored(os.path.join(base, LATIN1)).replace("\x00e9", "\x00E9"),  # not canonical (upper-case hex)
        str(coll / "caf\x00c3\x00a9.png"),  # escaped bytes that are UTF-8: never a stored form
        display(ids[LATIN1]),  # the display form is not a key
        str(coll / "caf\x00"),  # a bare NUL
        ids[LATIN1] + "\x00",
        ids[LATIN1][: ids[LATIN1].index("\x00")],  # truncated at the escape (as C code would read it)
        "/etc/passwd",
    ]
    for bad in forged:
        for route in ("image", "thumb"):
            r = client.get(f"/imgrag/{route}?id={quote(bad, safe='')}")
            assert r.status_code == 404, (route, bad, r.status_code)
    # a lone surrogate cannot even be written as UTF-8 in a URL; percent-encoded raw bytes decode to U+FFFD
    r = client.get("/imgrag/image?id=" + quote(str(coll), safe="") + "%2Fcaf%E9-%E9t%E9.png")
    assert r.status_code == 404
    # the indexed file itself is served while it is unchanged
    assert client.get(f"/imgrag/image?id={quote(ids[LATIN1], safe='')}").status_code == 200


# ------------------------------------------------------------------------------------------------
# documents: a PDF under a name that is not UTF-8 (page ids "<stored path>#page=<n>")
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("store", ["lancedb", "faiss"])
def test_pdf_with_a_name_that_is_not_utf8(tmp_path, store):
    pytest.importorskip("pypdfium2")
    fpdf = pytest.importorskip("fpdf")
    from imgrag.app.web.backend import Backend, UIConfig

    docs = tmp_path / "docs"
    docs.mkdir()
    pdf = fpdf.FPDF(format="A4")
    for text in ("alpha page", "beta page"):
        pdf.add_page()
        pdf.set_font("helvetica", size=14)
        pdf.text(20, 30, text)
    pdf.output(str(tmp_path / "tmp.pdf"))
    name = os.path.join(os.fsencode(docs), "résumé.pdf".encode("latin-1"))
    os.rename(tmp_path / "tmp.pdf", name)
    sid = to_stored(name)
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store=store)
    rep = build_index(idx, [docs], OPTS)
    assert rep.skipped == [] and rep.embedded == 2
    rows = all_rows(idx)
    assert sorted(rows) == [f"{sid}#page=1", f"{sid}#page=2"]
    assert rows[f"{sid}#page=2"]["path"] == sid and rows[f"{sid}#page=2"]["text"] == "beta page"
    backend = Backend(UIConfig(index_root=idx.root, thumb_dir=tmp_path / "thumbs", index_workers=0), index=idx)
    assert backend.thumbnail(f"{sid}#page=2") != backend.thumbs.placeholder()
    # renamed to a Shift-JIS name: both pages reused by (content hash, page); deleted: pruned
    name2 = os.path.join(os.fsencode(docs), "履歴書.pdf".encode("shift_jis"))
    os.rename(name, name2)
    rep = build_index(idx, [docs], OPTS)
    assert (rep.embedded, rep.reused, rep.deleted) == (0, 2, 2)
    assert sorted(all_rows(idx)) == [f"{to_stored(name2)}#page=1", f"{to_stored(name2)}#page=2"]
    os.unlink(name2)
    assert build_index(idx, [docs], OPTS).deleted == 2 and idx.store.count() == 0


# ------------------------------------------------------------------------------------------------
# the Ray engine reads local files through the same forms
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_engine_indexes_names_that_are_not_utf8(tmp_path, tiny_model_configs):
    ray = pytest.importorskip("ray", reason="needs Ray Data: pip install 'imgrag[distributed]'")
    pytest.importorskip("lance", reason="needs pylance: pip install 'imgrag[distributed]'")
    from imgrag.indexer.ray_engine import RayOptions, build_index_ray
    from imgrag.retrieval.embedders.openclip import OpenClipEmbedder

    coll = tmp_path / "coll"
    ids = _make_collection(coll)
    started = not ray.is_initialized()
    if started:
        env = {k: os.environ[k] for k in ("IMGRAG_MODEL_CONFIGS", "IMGRAG_ALLOW_RANDOM_WEIGHTS", "HF_HUB_OFFLINE")
               if k in os.environ}
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
        ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        emb = OpenClipEmbedder("imgrag-tiny-clip", device="cpu", precision="fp32", batch_size=4)
        idx = Index.create_or_open(tmp_path / "idx", emb)
        opts = RayOptions(actors=1, batch_size=4, rows_per_fragment=4, commit_every=8, device="cpu", precision="fp32")
        rep = build_index_ray(idx, [coll], opts)
        assert rep.skipped == [] and set(all_rows(idx)) == set(ids.values())
        os.unlink(to_fs(ids[INVALID]))
        rep = build_index_ray(idx, [coll], opts)
        assert rep.deleted == 1 and set(all_rows(idx)) == set(ids.values()) - {ids[INVALID]}
    finally:
        if started:
            ray.shutdown()
