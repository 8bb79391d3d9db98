"""`imgrag serve` as a real server: real HTTP requests for path traversal, auth, binding and load.

The index is built by the real CLI with a tiny random-init open_clip model (tests/model_configs), so
the server starts quickly; semantics are checked in the browser tests with the lite model.
"""

from __future__ import annotations

import http.cookiejar
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from ui_support import SAMPLES, VENV_BIN, Server, free_port, gradio_call, http_get, raw_get, serve_env

SECRET = b"imgrag-secret-marker-7f3a9c not an image\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A collection, a secret file beside it, an index of the collection, and a running server."""
    base = tmp_path_factory.mktemp("uiserver")
    coll = base / "photos"
    (coll / "sub").mkdir(parents=True)
    for rel in ("animals/cat_chelsea.jpg", "food/apple.png", "space/saturn.jpg"):
        shutil.copy(SAMPLES / rel, coll / Path(rel).name)
    shutil.copy(SAMPLES / "food/pear.png", coll / "sub" / "pear.png")
    shutil.copy(SAMPLES / "food/grapes.png", coll / "swapped.png")
    secret = base / "secret.txt"
    secret.write_bytes(SECRET)
    # a symlink out of the collection that exists at indexing time (target is not an image → skipped)
    os.symlink(secret, coll / "link_to_secret.jpg")
    idx = base / "idx"
    r = subprocess.run([str(VENV_BIN / "imgrag"), "index", str(coll), "--model", "imgrag-tiny-clip", "--index",
                        str(idx), "--workers", "0", "--no-progress"], capture_output=True, text=True, env=serve_env(),
                       timeout=600)
    assert r.returncode == 0, r.stderr
    # after indexing: an indexed file is replaced by a symlink to the secret; another symlink appears
    os.replace(coll / "swapped.png", base / "grapes-moved.png")
    os.symlink(secret, coll / "swapped.png")
    os.symlink(secret, coll / "new_link.png")
    server = Server(idx, cache=base / "cache")  # no --host: the default must be 127.0.0.1
    yield {"base": base, "coll": coll, "secret": secret, "idx": idx, "server": server}
    server.stop()


def _q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def test_default_bind_is_loopback_only(site):
    srv = site["server"]
    assert f"http://127.0.0.1:{srv.port}" in srv.output() and "warning" not in srv.output()
    # the kernel's table of listening sockets: bound to 127.0.0.1 (0100007F), not 0.0.0.0
    listening = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, port = local.split(":")
        if state == "0A" and int(port, 16) == srv.port:
            listening.add(addr)
    assert listening == {"0100007F"}


def test_indexed_images_are_served(site):
    srv, coll = site["server"], site["coll"]
    cat = str(coll / "cat_chelsea.jpg")
    st, body, hdr = http_get(f"{srv.url}/imgrag/image?id={_q(cat)}")
    assert st == 200 and body == (coll / "cat_chelsea.jpg").read_bytes()
    assert hdr["content-type"] == "image/jpeg" and hdr["x-content-type-options"] == "nosniff"
    st, body, hdr = http_get(f"{srv.url}/imgrag/thumb?id={_q(cat)}")
    assert st == 200 and body[:3] == b"\xff\xd8\xff" and len(body) < (coll / "cat_chelsea.jpg").stat().st_size


def test_path_traversal_cannot_read_anything_else(site):
    srv, coll, secret, idx = site["server"], site["coll"], site["secret"], site["idx"]
    cat = str(coll / "cat_chelsea.jpg")
    ids = [str(secret), "/etc/passwd", f"{coll}/../secret.txt", f"{coll}/sub/../../secret.txt",
           "../secret.txt", "../../../../../../etc/passwd", str(coll / "link_to_secret.jpg"),
           str(coll / "new_link.png"), str(coll / "swapped.png"), str(idx / "imgrag.json"), cat + "\x00.png",
           cat + "/../../secret.txt", "' OR '1'='1", "%", "*", f"{coll}/*"]
    targets = []
    for i in ids:
        for route in ("image", "thumb"):
            targets.append(f"/imgrag/{route}?id={_q(i)}")
            targets.append(f"/imgrag/{route}?id={_q(_q(i))}")  # double-encoded
    targets += [f"/imgrag/image?id={str(secret)}", "/imgrag/image?id=..%2F..%2F..%2F..%2Fetc%2Fpasswd",
                "/imgrag/image?id=%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/imgrag/image/../../etc/passwd",
                "/imgrag/..%2f..%2fetc%2fpasswd", "/imgrag/image?id=%c0%ae%c0%ae%2fetc%2fpasswd",
                f"/gradio_api/file={secret}", f"/gradio_api/file={_q(str(secret))}",
                f"/gradio_api/file={coll}/../secret.txt", f"/gradio_api/file={cat}",
                "/gradio_api/file=/etc/passwd", "/gradio_api/file=../../../../etc/passwd",
                "/gradio_api/file=%2Fetc%2Fpasswd", f"/gradio_api/file={idx}/imgrag.json",
                "/file=/etc/passwd", "/static/../../../../etc/passwd", "/assets/..%2f..%2f..%2f..%2fetc%2fpasswd",
                f"/gradio_api/file={srv.log_path}"]
    passwd = Path("/etc/passwd").read_bytes()[:32]
    for t in targets:
        st, body = raw_get("127.0.0.1", srv.port, t)
        assert SECRET not in body and passwd not in body, t
        assert b'"model"' not in body, t  # the manifest
        if t.startswith("/imgrag/"):
            assert st in (400, 404), (t, st)
        else:
            assert st != 200 or b"<!doctype html" in body[:200].lower(), (t, st)  # at most the app page
    # the file that was swapped for a symlink after indexing is refused, and its thumbnail is the placeholder
    st, body, _ = http_get(f"{srv.url}/imgrag/image?id={_q(str(coll / 'swapped.png'))}")
    assert st == 404 and SECRET not in body


def test_search_api_and_query_image_terms(site):
    srv, secret = site["server"], site["secret"]
    out = gradio_call(srv.url, "search", ["a photo", 3, 0, False, "", "", "", "", "all"])  # no label/type filter
    gal, status = out[0], _status(out)
    assert len(gal) == 3 and "3 result(s)" in status
    for g in gal:  # gallery images are thumbnails from the cache, fetchable
        st, body, _ = http_get(g["image"]["url"])
        assert st == 200 and body[:3] == b"\xff\xd8\xff" and "/imgrag/thumbs/" in g["image"]["url"]
    # a query naming a non-indexed file is refused with a message (and reads nothing)
    out = gradio_call(srv.url, "search", [f"image:{secret}", 3, 0, False, "", "", "", "", "all"])
    assert out[0] == [] and "indexed image" in _status(out) and "imgrag-error" in _status(out)


def _status(out: list) -> str:
    """The search handler's status line among its outputs (found by its markup, not its position)."""
    hits = [o for o in out if isinstance(o, str) and ("imgrag-status" in o or "imgrag-error" in o)]
    assert len(hits) == 1, out
    return hits[0]


def _upload(url: str, data: bytes, name: str) -> tuple[int, bytes]:
    boundary = "imgragboundary7f3a"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{url}/gradio_api/upload", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_uploads_over_the_byte_limit_are_refused_by_the_upload_route(site):
    url = site["server"].url
    st, body = _upload(url, b"\x89PNG\r\n\x1a\n" + os.urandom(26 * 1024 * 1024), "big.png")  # limit: 25 MB
    assert st == 413 and b"exceeded maximum allowed size" in body
    st, body = _upload(url, (SAMPLES / "food/apple.png").read_bytes(), "apple.png")
    assert st == 200 and b"apple.png" in body


def test_host_warning_and_auth(site, tmp_path):
    srv = Server(site["idx"], "--auth", "alice:wonder", host="0.0.0.0", cache=tmp_path)
    try:
        assert "warning: listening on 0.0.0.0" in srv.output()
        cat = _q(str(site["coll"] / "cat_chelsea.jpg"))
        st, _, _ = http_get(f"{srv.url}/imgrag/image?id={cat}")
        assert st == 401
        with pytest.raises(urllib.error.HTTPError) as e:  # the API needs the login too
            gradio_call(srv.url, "search", ["a photo", 3, 0, False, "", "", "", "", "all"])
        assert e.value.code in (401, 403)
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        bad = urllib.parse.urlencode({"username": "alice", "password": "nope"}).encode()
        with pytest.raises(urllib.error.HTTPError):
            opener.open(f"{srv.url}/login", data=bad, timeout=30)
        good = urllib.parse.urlencode({"username": "alice", "password": "wonder"}).encode()
        assert opener.open(f"{srv.url}/login", data=good, timeout=30).status == 200
        r = opener.open(f"{srv.url}/imgrag/image?id={cat}", timeout=30)
        assert r.status == 200 and r.read()[:3] == b"\xff\xd8\xff"
    finally:
        srv.stop()


def test_bad_serve_arguments_are_one_line_errors(site):
    port = free_port()
    r = subprocess.run([str(VENV_BIN / "imgrag"), "serve", "--index", str(site["idx"]), "--auth", "nopassword",
                        "--port", str(port)], capture_output=True, text=True, env=serve_env(), timeout=120)
    assert r.returncode == 2 and "--auth must be USER:PASSWORD" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([str(VENV_BIN / "imgrag"), "serve", "--index", str(site["idx"]), "--port",
                        str(site["server"].port)], capture_output=True, text=True, env=serve_env(), timeout=120)
    assert r.returncode == 2 and "pick another --port" in r.stderr and "Traceback" not in r.stderr


def test_load_small_zero_errors(site):
    """bench/ui_load.py's loop, scaled down: 5 users × 10 requests, every response checked."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from ui_load import run_load

    ids = [str(site["coll"] / n) for n in ("cat_chelsea.jpg", "apple.png", "saturn.jpg", "sub/pear.png")]
    res = run_load(site["server"].url, ids, users=5, requests=10)
    assert res["errors"] == []
    assert sum(len(v) for v in res["latencies"].values()) == 50


def test_roots_confine_indexing_when_listening_beyond_this_machine(site, tmp_path):
    """`serve --host 0.0.0.0 --roots DIR`: the Index tab's endpoint indexes folders under DIR only, and an image
    in a refused folder is never served (UI route or JSON API); without --roots it indexes nothing."""
    import json

    from waiting import wait_until

    idx = tmp_path / "idx"
    shutil.copytree(site["idx"], idx)  # the module's index stays as it is
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "new").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(SAMPLES / "vehicles/bus.png", allowed / "new" / "bus.png")
    shutil.copy(SAMPLES / "animals/owl.png", outside / "owl.png")
    os.symlink(outside, allowed / "escape")  # a way out of the root, resolved and refused
    srv = Server(idx, "--roots", str(allowed), host="0.0.0.0", cache=tmp_path / "cache")
    try:
        for refused in (outside, allowed / "escape", tmp_path):
            out = gradio_call(srv.url, "index_folder", [str(refused)])
            assert "only folders under" in out[0] and "--roots" in out[0], out
        owl = _q(str(outside / "owl.png"))
        assert http_get(f"{srv.url}/imgrag/image?id={owl}")[0] == 404
        assert http_get(f"{srv.url}/api/v1/media/original?id={owl}")[0] == 404
        out = gradio_call(srv.url, "index_folder", [str(allowed / "new")])
        assert "indexing started" in out[0], out

        def info():
            st, body, _ = http_get(f"{srv.url}/api/v1/info")
            assert st == 200
            d = json.loads(body)
            return d if d["job"]["state"] not in ("running", "idle") else None

        d = wait_until(info, 300, "the indexing job to end")
        assert d["job"]["state"] == "done" and {"path": str(allowed / "new"), "items": 1} in d["folders"]
        bus = _q(str(allowed / "new" / "bus.png"))
        assert http_get(f"{srv.url}/api/v1/media/original?id={bus}")[0] == 200
    finally:
        srv.stop()
    srv = Server(idx, host="0.0.0.0", cache=tmp_path / "cache2")  # beyond 127.0.0.1 without --roots: none
    try:
        out = gradio_call(srv.url, "index_folder", [str(allowed / "new")])
        assert "indexing from the UI is off" in out[0], out
    finally:
        srv.stop()
