"""The JSON HTTP API (``/api/v1``, app/web/api.py) of a real `imgrag serve`, with plain HTTP clients (urllib).

A mixed index (photos, a PDF, a file name that is not UTF-8) built with the offline lite model; the server runs
with ``--auth`` and a small upload limit, so login refusal and the byte limit are checked on the real routes.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from ui_support import SAMPLES, Server, build_lite_index, make_lite_corpus

USER, PW = "alice", "s3cret-pw"
GOOD = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PW}".encode()).decode()}
PAGES = ["Quarterly report: revenue of the flux capacitor division grew by eight percent this year.",
         "Market stall price list: ripe bananas cost two euros a kilo this week, pears three."]
LATIN1 = b"caf\xe9.png"  # a file name that is not UTF-8


def write_pdf(path: Path, pages: list[str]) -> Path:
    import fpdf

    pdf = fpdf.FPDF(format="A4")
    pdf.set_auto_page_break(False)
    for text in pages:
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.set_xy(15, 20)
        pdf.multi_cell(180, 6, text)
    pdf.output(str(path))
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("fpdf")
    pytest.importorskip("pypdfium2")
    base = tmp_path_factory.mktemp("httpapi")
    coll = make_lite_corpus(base / "photos")
    write_pdf(coll / "report.pdf", PAGES)
    shutil.copy(SAMPLES / "animals/penguin.png", os.path.join(os.fsencode(coll), LATIN1))
    (base / "secret.txt").write_text("secret marker 51a7\n")
    idx = base / "idx"
    build_lite_index(coll, idx)
    server = Server(idx, "--auth", f"{USER}:{PW}", "--max-upload-mb", "0.3", cache=base / "cache")
    yield {"base": base, "coll": coll, "server": server}
    server.stop()


def call(site, method: str, route: str, body: dict | None = None, headers: dict | None = GOOD,
         raw: bytes | None = None, ctype: str | None = None) -> tuple[int, bytes, dict]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = dict(headers or {})
    if data is not None:
        h["Content-Type"] = ctype or "application/json"
    req = urllib.request.Request(site["server"].url + "/api/v1" + route, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status, r.read(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, e.read(), {k.lower(): v for k, v in e.headers.items()}


def get_json(site, route: str, **params) -> tuple[int, dict]:
    q = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    st, body, _ = call(site, "GET", route + ("?" + q if q else ""))
    return st, json.loads(body)


def multipart(fields: dict[str, str], file: bytes, name: str = "q.jpg") -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    out = io.BytesIO()
    for k, v in fields.items():
        out.write(f"--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode())
    out.write(f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
              "Content-Type: application/octet-stream\r\n\r\n".encode() + file + b"\r\n")
    out.write(f"--{b}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={b}"


def jpeg_of(path: Path, size: int = 256) -> bytes:
    from PIL import Image

    img = Image.open(path).convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def test_openapi_lists_the_routes_with_typed_models(site):
    st, body, hdr = call(site, "GET", "/openapi.json", headers=None)
    assert st == 200 and hdr["content-type"].startswith("application/json")
    spec = json.loads(body)
    assert {"/search", "/search/image", "/ask", "/classify", "/classify/image", "/info", "/media/original",
            "/media/thumb", "/media/preview"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert {"SearchOut", "ItemOut", "AskOut", "CitationOut", "ClassifyOut", "InfoOut", "ErrorOut"} <= set(schemas)
    assert {"id", "path", "score", "page", "kind", "thumb_url"} <= set(schemas["ItemOut"]["properties"])
    assert {"answer", "citations", "refused"} <= set(schemas["AskOut"]["properties"])


@pytest.mark.parametrize("route", ["/info", "/search?q=cat", "/media/thumb?id=x", "/media/original?id=x"])
def test_login_is_required(site, route):
    for headers in (None, {"Authorization": "Basic " + base64.b64encode(b"alice:wrong").decode()},
                    {"Authorization": "Bearer abc"}):
        st, body, hdr = call(site, "GET", route, headers=headers)
        assert st == 401, (route, headers)
        assert set(json.loads(body)) == {"error"} and "login" in json.loads(body)["error"]
        assert hdr.get("www-authenticate", "").startswith("Basic")


def test_info_counts_items_and_folders(site):
    st, info = get_json(site, "/info")
    assert st == 200
    # 10 samples + 2 dated + the HTML-named file + the latin-1 one + 2 PDF pages (broken.jpg is skipped)
    assert info["items"] == 16 and info["model"] and info["skipped"] == 1
    assert info["folders"] == [{"path": str(site["coll"]), "items": 16}]
    assert info["max_upload_bytes"] == int(0.3 * 1024 * 1024)


def test_search_returns_ids_paths_scores_and_metadata(site):
    st, out = get_json(site, "/search", q="a truck or a bus", k=5)
    assert st == 200 and out["count"] == len(out["results"]) == 5 and out["mode"] == "auto"
    top = out["results"][0]
    assert top["name"] == "bus.png" and top["kind"] == "photo" and top["page"] is None
    assert top["path"] == str(site["coll"] / "bus.png") and top["id"] == top["path"]
    assert isinstance(top["score"], float) and top["thumb_url"].startswith("/api/v1/media/thumb?id=")
    assert [r["score"] for r in out["results"]] == sorted((r["score"] for r in out["results"]), reverse=True)
    # the media links work with the same login, and the original is the file itself
    st, data, hdr = call(site, "GET", top["original_url"][len("/api/v1"):])
    assert st == 200 and data == (site["coll"] / "bus.png").read_bytes() and hdr["content-type"] == "image/png"
    st, data, hdr = call(site, "GET", top["thumb_url"][len("/api/v1"):])
    assert st == 200 and data[:3] == b"\xff\xd8\xff"


def test_search_filters(site):
    st, pages = get_json(site, "/search", q="bananas price list", k=20, type="page")
    assert st == 200 and pages["results"] and all(r["kind"] == "page" and r["page"] in (1, 2) for r in pages["results"])
    assert pages["results"][0]["page"] == 2 and "price" in pages["results"][0]["matched_terms"]
    assert pages["results"][0]["name"] == "report.pdf"
    # a page's original is that page rendered (the PDF itself is not an image the server hands out)
    st, data, hdr = call(site, "GET", pages["results"][0]["original_url"][len("/api/v1"):])
    assert st == 200 and hdr["content-type"] == "image/jpeg" and data[:3] == b"\xff\xd8\xff"
    st, photos = get_json(site, "/search", q="bananas price list", k=20, type="photo")
    assert photos["results"] and all(r["kind"] == "photo" and r["page"] is None for r in photos["results"])
    st, dated = get_json(site, "/search", q="a flower", k=20, path="*/dated/*")
    assert {r["name"] for r in dated["results"]} == {"daisy_2019.jpg", "apple_2021.jpg"}
    st, after = get_json(site, "/search", q="a flower", k=20, after="2020-01-01")
    assert [r["name"] for r in after["results"]] == ["apple_2021.jpg"]
    assert after["results"][0]["taken_at"].startswith("2021-07-15")
    st, lab = get_json(site, "/search", q="a flower", k=20, label="no-such-label")
    assert st == 200 and lab["results"] == []
    st, cut = get_json(site, "/search", q="a truck or a bus", k=20, min_score=0.99)
    assert st == 200 and all(r["score"] >= 0.99 for r in cut["results"])
    st, vec = get_json(site, "/search", q="bananas price list", k=3, mode="vector")
    assert st == 200 and vec["mode"] == "vector" and all(r["keyword"] is None for r in vec["results"])


def test_paths_in_display_form_and_their_ids_serve(site):
    st, out = get_json(site, "/search", q="a penguin", k=20)
    shown = [r for r in out["results"] if r["name"] == "caf\\xe9.png"]
    assert st == 200 and len(shown) == 1, [r["name"] for r in out["results"]]
    st, data, _ = call(site, "GET", "/media/original?id=" + urllib.parse.quote(shown[0]["id"], safe=""))
    assert st == 200 and data == (SAMPLES / "animals/penguin.png").read_bytes()


@pytest.mark.parametrize("params,word", [({"q": "cat", "k": 0}, "k must be"), ({"q": "cat", "mode": "bogus"}, "mode"),
                                         ({"q": "cat", "after": "yesterday"}, "not a date"), ({"q": " "}, "query"),
                                         ({"q": "cat", "type": "video"}, "type"),
                                         ({"q": "image:/etc/passwd"}, "indexed image")])
def test_bad_search_input_is_a_400_with_one_line(site, params, word):
    st, out = get_json(site, "/search", **params)
    assert st in (400, 422) and set(out) == {"error"} and word in out["error"] and "\n" not in out["error"]


def test_forged_ids_are_refused(site):
    secret = str(site["base"] / "secret.txt")
    for forged in (secret, "../secret.txt", "/etc/passwd", str(site["coll"] / "broken.jpg"), "", "x" * 9000):
        for kind in ("original", "thumb", "preview"):
            st, body, hdr = call(site, "GET", f"/media/{kind}?id=" + urllib.parse.quote(forged, safe=""))
            assert st in (404, 422), (kind, forged[:40], st)
            assert set(json.loads(body)) == {"error"} and b"secret marker" not in body


def test_search_by_image_upload_and_its_byte_limit(site):
    body, ctype = multipart({"k": "3"}, jpeg_of(SAMPLES / "vehicles/bus.png"))
    st, data, _ = call(site, "POST", "/search/image", raw=body, ctype=ctype)
    out = json.loads(data)
    assert st == 200 and out["results"][0]["name"] == "bus.png" and out["count"] == 3
    big = os.urandom(400_000)  # over the 0.3 MB limit
    body, ctype = multipart({"k": "3"}, big)
    st, data, _ = call(site, "POST", "/search/image", raw=body, ctype=ctype)
    assert st == 413 and "too large" in json.loads(data)["error"]
    body, ctype = multipart({"k": "3"}, b"not an image at all")
    st, data, _ = call(site, "POST", "/search/image", raw=body, ctype=ctype)
    assert st == 400 and set(json.loads(data)) == {"error"}
    st, data, _ = call(site, "POST", "/search/image", raw=body, ctype=ctype, headers=None)
    assert st == 401


def test_classify_ids_and_upload_never_write(site):
    _, out = get_json(site, "/search", q="a truck or a bus", k=2)
    ids = [r["id"] for r in out["results"]]
    st, data, _ = call(site, "POST", "/classify", {"labels": ["vehicle", "food", "animal"], "ids": ids})
    res = json.loads(data)
    assert st == 200 and res["written"] is False and [r["id"] for r in res["results"]] == ids
    first = res["results"][0]
    assert first["path"].endswith("bus.png") and first["top"][0]["label"] == "vehicle"
    assert {"label", "score"} == set(first["top"][0])
    _, again = get_json(site, "/search", q="a truck or a bus", k=2)
    assert all(r["label"] is None for r in again["results"])  # nothing written
    body, ctype = multipart({"labels": "vehicle, food, animal"}, jpeg_of(SAMPLES / "food/apple.png"))
    st, data, _ = call(site, "POST", "/classify/image", raw=body, ctype=ctype)
    res = json.loads(data)
    assert st == 200 and res["results"][0]["label"] == "food" and len(res["results"][0]["top"]) == 3
    st, data, _ = call(site, "POST", "/classify", {"labels": ["only-one"], "ids": ids})
    assert st in (400, 422) and set(json.loads(data)) == {"error"}


def _smollm():
    smollm = pytest.importorskip("imgrag.retrieval.generators.smollm")
    try:
        smollm.package_dir()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"smollm2 weights not installed: {e}")


def test_ask_answers_with_citations(site):
    _smollm()
    st, data, _ = call(site, "POST", "/ask", {"question": "What does the price list say bananas cost?"})
    out = json.loads(data)
    assert st == 200, out
    assert {"answer", "citations", "refused", "sent", "generator", "notes"} <= set(out)
    assert out["refused"] is False and out["answer"].strip() and out["citations"]
    c = out["citations"][0]
    assert {"n", "id", "path", "page", "score", "thumb_url"} <= set(c) and f"[{c['n']}]" in out["answer"]
    assert any(s["path"].endswith("report.pdf") and s["page"] == 2 for s in out["sent"])


def test_ask_streams_as_server_sent_events(site):
    _smollm()
    st, data, hdr = call(site, "POST", "/ask", {"question": "What does the price list say bananas cost?",
                                                "stream": True})
    assert st == 200 and hdr["content-type"].startswith("text/event-stream")
    events = [blk.split("\n", 1) for blk in data.decode().strip().split("\n\n")]
    kinds = [e[0] for e in events]
    assert kinds[-1] == "event: result" and "event: chunk" in kinds and "event: error" not in kinds
    chunks = "".join(json.loads(e[1][len("data: "):])["text"] for e in events if e[0] == "event: chunk")
    result = json.loads(events[-1][1][len("data: "):])
    assert result["answer"].strip() and result["answer"].strip() == chunks.strip()
    assert result["citations"] and not result["refused"]


def test_ask_refuses_bad_input(site):
    st, data, _ = call(site, "POST", "/ask", {"question": "   "})
    assert st == 400 and set(json.loads(data)) == {"error"}
    st, data, _ = call(site, "POST", "/ask", {"question": "x" * 5000})
    assert st == 422 and "question" in json.loads(data)["error"]
    st, data, _ = call(site, "POST", "/ask", raw=b"{not json", ctype="application/json")
    assert st in (400, 422) and set(json.loads(data)) == {"error"}


def test_roots_rule_for_indexing_from_the_ui(tmp_path):
    """127.0.0.1 without --roots: any folder; beyond it: only under --roots (symlinks resolved), none without."""
    from imgrag.app.web.backend import Backend, UIConfig
    from imgrag.app.web.server import allowed_roots
    from imgrag.retrieval.errors import ImgragError

    allowed, other = tmp_path / "allowed", tmp_path / "other"
    (allowed / "sub").mkdir(parents=True)
    other.mkdir()
    os.symlink(other, allowed / "escape")
    assert allowed_roots("127.0.0.1", None) is None and allowed_roots("0.0.0.0", None) == ()
    with pytest.raises(ImgragError, match="not a folder"):
        allowed_roots("0.0.0.0", [str(tmp_path / "missing")])
    for roots, ok, refused in ((allowed_roots("0.0.0.0", [str(allowed)]), [allowed, allowed / "sub"],
                                [other, allowed / "escape", tmp_path]),
                               (allowed_roots("0.0.0.0", None), [], [allowed, other])):
        b = Backend(UIConfig(index_root=tmp_path / "idx", allowed_roots=roots, thumb_dir=tmp_path / "thumbs"))
        for f in refused:
            with pytest.raises(ImgragError, match="roots"):
                b.start_indexing(str(f))
        for f in ok:
            from imgrag.app.web.folders import check_allowed

            check_allowed(b, f)  # no error


def test_long_input_is_refused_or_cut_never_echoed_in_full(site):
    st, out = get_json(site, "/search", q="zebra " * 1000)  # over the 2,000-character limit of q
    assert st == 422 and set(out) == {"error"} and len(out["error"]) < 200 and "zebra zebra" not in out["error"]
    st, out = get_json(site, "/search", q="a cat", after="last tuesday " * 400)  # echoed in the message: cut
    assert st == 400 and "not a date" in out["error"] and len(out["error"]) < 200
    st, data, _ = call(site, "POST", "/ask", {"question": "zebra " * 1000})
    assert st == 422 and len(json.loads(data)["error"]) < 200


def test_decompression_bomb_upload_is_refused_before_decoding(site):
    import struct
    import zlib

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))  # 400 MP in 80 bytes
    for route, fields in (("/search/image", {"k": "3"}), ("/classify/image", {"labels": "a, b"})):
        body, ctype = multipart(fields, bomb, "bomb.png")
        st, data, _ = call(site, "POST", route, raw=body, ctype=ctype)
        out = json.loads(data)
        assert st == 413 and set(out) == {"error"} and "400 MP > 50 MP" in out["error"], (route, st, out)
