"""An index on object storage: a real S3-compatible server (moto's server mode) on 127.0.0.1.

The index (manifest, skipped list, writer lease and the LanceDB table) lives in a bucket; we index,
search, append, and check that a reader in another process sees consistent committed versions while a
writer appends, and that the CLI works against ``s3://`` URIs.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("moto", reason="needs moto[server] (pip install 'imgrag[test]')")
pytest.importorskip("boto3")

from imgrag.indexer.lease import LEASE_NAME, ObjectLease  # noqa: E402
from imgrag.indexer.pipeline import IndexOptions, build_index  # noqa: E402
from imgrag.retrieval.errors import ImgragError, IndexLockedError, IndexNotFoundError  # noqa: E402
from imgrag.retrieval.index import Index  # noqa: E402
from imgrag.retrieval.queries.search import search  # noqa: E402

from fakes import FakeEmbedder  # noqa: E402
from waiting import wait_past  # noqa: E402

BUCKET = "imgrag-test"
MODEL = "imgrag-tiny-clip"
OPTS = IndexOptions(batch_size=4, workers=0, commit_every=3)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free local port; AWS_* variables point every client (and subprocess) at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "NO_PROXY": "127.0.0.1,localhost"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def keys(client, prefix: str) -> list[str]:
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def make_images(folder: Path, n: int, seed: int, start: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        color = rng.integers(0, 256, size=3)
        arr = np.clip(color + rng.integers(-20, 20, size=(36, 44, 3)), 0, 255).astype(np.uint8)
        p = folder / f"img{i:03d}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def test_index_search_append_on_s3(s3, tmp_path):
    uri = f"s3://{BUCKET}/fake-index"
    coll = tmp_path / "photos"
    paths = make_images(coll, 7, seed=1)
    (coll / "broken.jpg").write_bytes(b"not an image at all")
    emb = FakeEmbedder()
    idx = Index.create_or_open(uri, emb, store="lancedb")
    assert idx.location.remote and idx.root == uri
    rep = build_index(idx, [coll], OPTS)
    assert rep.embedded == 7 and len(rep.skipped) == 1 and rep.total_items == 7

    stored = keys(s3, "fake-index/")
    assert "fake-index/imgrag.json" in stored and "fake-index/skipped.jsonl" in stored
    assert any(k.startswith("fake-index/lancedb/images.lance/") for k in stored)
    assert "fake-index/" + LEASE_NAME not in stored  # released after the run
    assert not (tmp_path / "s3:").exists() and not Path("s3:").exists()  # nothing written locally

    # a fresh handle reads everything back from the bucket
    again = Index.open(uri, embedder=emb)
    assert again.manifest.model == "fake-rgb" and again.store.count() == 7
    assert [s["path"] for s in again.skipped()] == [str(coll / "broken.jpg")]
    info = again.info()
    assert info["items"] == 7 and info["skipped"] == 1 and info["disk_bytes"] > 0

    # exact search == brute force over the stored vectors
    q = emb.embed_texts(["red"])[0]
    rows = {r["id"]: r for b in again.store.scan() for r in b.to_pylist()}
    brute = sorted(rows, key=lambda i: -float(np.dot(rows[i]["vector"], q)))[:3]
    hits = again.store.search(q[None, :], 3)[0]
    assert [h.id for h in hits] == brute

    # append + incremental: unchanged files skipped, new ones added, no duplicates
    make_images(coll, 4, seed=2, start=7)
    rep2 = build_index(again, [coll], OPTS)
    assert (rep2.embedded, rep2.unchanged, rep2.total_items) == (4, 7, 11)
    ids = [r["id"] for b in again.store.scan(columns=["id"]) for r in b.to_pylist()]
    assert len(ids) == len(set(ids)) == 11
    assert set(ids) == {str(p) for p in sorted(coll.glob("img*"))}

    # deleted files are pruned
    paths[0].unlink()
    rep3 = build_index(again, [coll], OPTS)
    assert rep3.deleted == 1 and again.store.count() == 10

    # --rebuild empties the prefix (but the index stays usable)
    idx2 = Index.create_or_open(uri, emb, store="lancedb", rebuild=True)
    assert idx2.store.count() == 0 and idx2.skipped() == []


def test_lease_single_writer(s3, tmp_path):
    uri = f"s3://{BUCKET}/lease-index"
    coll = tmp_path / "p"
    make_images(coll, 2, seed=3)
    idx = Index.create_or_open(uri, FakeEmbedder(), store="lancedb")

    def lease() -> dict:
        return json.loads(s3.get_object(Bucket=BUCKET, Key=f"lease-index/{LEASE_NAME}")["Body"].read())

    # another process's lease: _take() puts the lease object without entering this process's registry of
    # held locks (which would refuse build_index below by itself, "this process", without asking the bucket)
    other = ObjectLease(uri, ttl_s=4)
    other._take()
    try:
        first = lease()
        assert first["owner"] == other.owner and first["expires_at"] > time.time()
        with pytest.raises(IndexLockedError, match="another imgrag process"):
            build_index(idx, [coll], OPTS)
        # past the lifetime the lease was taken with: only renewal (every ttl/3) keeps it locked
        wait_past(first["expires_at"], 60, "the first expiry time of the holder's lease")
        with pytest.raises(IndexLockedError):
            build_index(idx, [coll], OPTS)
        assert lease()["owner"] == other.owner and lease()["expires_at"] > first["expires_at"]
    finally:
        other._stop.set()  # the holder "dies": stops renewing and never deletes its lease
        other._thread.join()
    # an expired lease is taken over (conditional PUT on its ETag)
    wait_past(lease()["expires_at"], 60, "the dead holder's lease to expire")
    rep = build_index(idx, [coll], OPTS)
    assert rep.embedded == 2
    assert f"lease-index/{LEASE_NAME}" not in keys(s3, "lease-index/")


def test_errors_are_specific(s3):
    with pytest.raises(IndexNotFoundError, match="no imgrag index at s3://"):
        Index.open(f"s3://{BUCKET}/nothing-here")
    with pytest.raises(ImgragError, match="needs a local folder"):
        Index.create_or_open(f"s3://{BUCKET}/faiss-index", FakeEmbedder(), store="faiss")
    with pytest.raises(ImgragError, match="names no bucket"):
        Index.open("s3:///x")


READER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from imgrag.retrieval.index import Index
    store = Index.open(sys.argv[1]).store
    q = np.asarray(json.loads(sys.argv[2]), dtype=np.float32)
    print("ready", flush=True)
    for line in sys.stdin:
        # three separate reads; each must see one committed version (a commit may land between them)
        ids = [r["id"] for b in store.scan(columns=["id"]) for r in b.to_pylist()]
        count = store.count()
        hits = store.search(q[None, :], 5)[0]
        print(json.dumps({"count": count, "ids": ids, "hits": [[h.id, h.score] for h in hits]}), flush=True)
""")


@pytest.mark.slow
def test_reader_process_sees_consistent_versions(s3, tmp_path, tiny_model_configs):
    """One writer appends in chunks while another process reads: every read is one committed version."""
    from imgrag.retrieval.embedders.openclip import OpenClipEmbedder

    uri = f"s3://{BUCKET}/clip-index"
    coll = tmp_path / "photos"
    make_images(coll, 6, seed=4)
    emb = OpenClipEmbedder(MODEL, device="cpu", precision="fp32", batch_size=4)
    idx = Index.create_or_open(uri, emb, store="lancedb", store_options={"consistency_s": 0})
    build_index(idx, [coll], OPTS)
    q = emb.embed_texts(["a photo of a cat"])[0]
    script = tmp_path / "reader.py"
    script.write_text(READER)
    reader = subprocess.Popen([sys.executable, str(script), uri, json.dumps(q.tolist())], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))

    def ask() -> dict:
        reader.stdin.write("check\n")
        reader.stdin.flush()
        line = reader.stdout.readline()
        assert line, reader.stderr.read()
        return json.loads(line)

    try:
        assert reader.stdout.readline().strip() == "ready", reader.stderr.read()
        first = ask()
        assert first["count"] == 6 and len(set(first["ids"])) == 6

        more = make_images(coll, 9, seed=5, start=6)
        allowed = {6, 9, 12, 15}  # batches of 3, a commit per batch: a reader sees one of these, never between
        done = threading.Event()
        err: list[BaseException] = []

        def write() -> None:
            try:
                build_index(idx, [coll], IndexOptions(batch_size=3, workers=0, commit_every=3))
            except BaseException as e:  # noqa: BLE001 - reported below
                err.append(e)
            finally:
                done.set()
        t = threading.Thread(target=write)
        t.start()
        seen = []
        every = {str(p) for p in coll.glob("img*")}
        while not done.is_set() or len(seen) < 2:
            r = ask()
            assert len(r["ids"]) in allowed, len(r["ids"])  # a scan sees a whole number of commits
            assert len(set(r["ids"])) == len(r["ids"])  # and no duplicates
            assert r["count"] in allowed and r["count"] >= len(r["ids"])  # read after the scan: same or newer
            assert set(r["ids"]) <= every and {h for h, _ in r["hits"]} <= every and len(r["hits"]) == 5
            scores = [s for _, s in r["hits"]]
            assert scores == sorted(scores, reverse=True)
            seen.append(len(r["ids"]))
        t.join()
        assert not err, err
        assert seen == sorted(seen)  # versions only move forward
        final = ask()
        assert final["count"] == 15 and set(final["ids"]) == every
        mine = idx.store.search(q[None, :], 5)[0]
        assert [h for h, _ in final["hits"]] == [h.id for h in mine]
        np.testing.assert_allclose([s for _, s in final["hits"]], [h.score for h in mine], atol=1e-5)
    finally:
        reader.stdin.close()
        reader.wait(timeout=30)
    assert more[-1].exists()

    # the CLI, in another process, against the s3:// URI
    exe = Path(sys.executable).with_name("imgrag")
    r = subprocess.run([str(exe), "search", "a photo of a cat", "--index", uri, "-k", "5", "--json", "--precision", "fp32"],
                       capture_output=True, text=True, env=dict(os.environ), timeout=180)
    assert r.returncode == 0, r.stderr
    cli_hits = json.loads(r.stdout)
    ref = search(idx, "a photo of a cat", k=5)
    assert [h["id"] for h in cli_hits] == [h.id for h in ref]
    r = subprocess.run([str(exe), "info", "--index", uri, "--json"], capture_output=True, text=True,
                       env=dict(os.environ), timeout=180)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["items"] == 15

    # the web UI's backend (what `imgrag serve --index s3://…` runs) reads the same index
    from imgrag.app.web.backend import Backend, UIConfig

    backend = Backend(UIConfig(index_root=uri, device="cpu", precision="fp32", thumb_dir=tmp_path / "thumbs"),
                      index=None)
    assert backend.has_index() and backend.root == uri
    items = backend.search_text("a photo of a cat", k=5)
    assert [it.id for it in items] == [h.id for h in ref]
    assert all(Path(it.thumb).is_file() for it in items)
