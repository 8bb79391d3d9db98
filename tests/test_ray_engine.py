"""Distributed indexing on a local Ray cluster (2 CPUs, started once for this module).

The Ray engine's index must equal the local indexer's (same rows and metadata, vectors within cosine
0.9999), with the same incremental, skip and resume behaviour. The model is the tiny random-init
open_clip config from tests/model_configs: the workers find it through IMGRAG_MODEL_CONFIGS, which
conftest sets before Ray starts (workers inherit the environment).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray", reason="needs Ray Data: pip install 'imgrag[distributed]'")
pytest.importorskip("lance", reason="needs pylance: pip install 'imgrag[distributed]'")

from imgrag.indexer.pipeline import IndexOptions, build_index  # noqa: E402
from imgrag.indexer.ray_engine import RayOptions, build_index_ray  # noqa: E402
from imgrag.retrieval.index import Index  # noqa: E402
from reliability import all_rows  # noqa: E402

pytestmark = pytest.mark.slow

MODEL = "imgrag-tiny-clip"
BUCKET = "imgrag-ray"
SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
META = ("id", "path", "size", "mtime_ns", "hash", "width", "height", "taken_at", "gps_lat", "gps_lon")


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server on 127.0.0.1 (started before Ray, so the workers get its AWS_* variables)."""
    pytest.importorskip("moto")
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield env, client
    finally:
        server.stop()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def ray_cluster(tiny_model_configs, s3_env):
    import ray

    if ray.is_initialized():  # pragma: no cover - another module started one
        yield ray
        return
    env_vars = {k: os.environ[k] for k in ("IMGRAG_MODEL_CONFIGS", "IMGRAG_ALLOW_RANDOM_WEIGHTS", "HF_HUB_OFFLINE")
                if k in os.environ}
    env_vars.update(s3_env[0])  # worker nodes read object storage with their own credentials
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env_vars})
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def collection(tmp_path) -> Path:
    """20 sample photos from data/samples (in 4 subject folders) plus one broken file."""
    coll = tmp_path / "photos"
    for sub in ("animals", "food", "space", "buildings"):
        files = sorted((SAMPLES / sub).iterdir())[:5]
        (coll / sub).mkdir(parents=True)
        for f in files:
            shutil.copy2(f, coll / sub / f.name)
    (coll / "food" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    return coll


def embedder():
    from imgrag.retrieval.embedders.openclip import OpenClipEmbedder

    return OpenClipEmbedder(MODEL, device="cpu", precision="fp32", batch_size=4)


ROPTS = dict(actors=1, batch_size=4, rows_per_fragment=4, commit_every=8, device="cpu", precision="fp32")


def assert_same(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert set(a) == set(b)
    for i in a:
        for c in META:
            assert a[i][c] == b[i][c], (i, c, a[i][c], b[i][c])
        va, vb = np.asarray(a[i]["vector"]), np.asarray(b[i]["vector"])
        assert float(va @ vb) >= 0.9999, (i, float(va @ vb))


def test_ray_index_equals_local_and_is_incremental(ray_cluster, collection, tmp_path):
    local = Index.create_or_open(tmp_path / "local", embedder(), store="lancedb")
    lrep = build_index(local, [collection], IndexOptions(batch_size=4, workers=0))
    assert lrep.embedded == 20

    ridx = Index.create_or_open(tmp_path / "ray", embedder(), store="lancedb")
    rep = build_index_ray(ridx, [collection], RayOptions(**ROPTS))
    assert (rep.embedded, rep.total_items, rep.new_or_changed) == (20, 20, 21)
    assert [s["path"] for s in rep.skipped] == [str(collection / "food" / "broken.jpg")]
    assert "not" in rep.skipped[0]["reason"].lower() or "cannot" in rep.skipped[0]["reason"].lower()
    assert ridx.skipped() == rep.skipped  # recorded in the index, like the local engine
    assert_same(all_rows(Index.open(tmp_path / "ray")), all_rows(local))
    assert [s["reason"] for s in ridx.skipped()] == [s["reason"] for s in local.skipped()]
    # several fragments were committed in several versions (one Append per commit_every rows)
    assert ridx.store.describe()["version"] >= 3

    # rerun: nothing to do (unchanged by size+mtime; the broken file is not retried)
    rep2 = build_index_ray(ridx, [collection], RayOptions(**ROPTS))
    assert (rep2.embedded, rep2.unchanged, rep2.new_or_changed, rep2.deleted) == (0, 20, 0, 0)
    assert len(ridx.skipped()) == 1

    # change one (replaced via merge_insert), add one, delete one — on both engines
    changed = sorted((collection / "space").iterdir())[0]
    Image.open(sorted((collection / "animals").iterdir())[0]).convert("RGB").save(changed, "JPEG")
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    added = collection / "space" / "new.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(added)
    removed = sorted((collection / "buildings").iterdir())[0]
    removed.unlink()
    rep3 = build_index_ray(ridx, [collection], RayOptions(**ROPTS))
    assert (rep3.embedded, rep3.deleted, rep3.unchanged, rep3.total_items) == (2, 1, 18, 20)
    build_index(local, [collection], IndexOptions(batch_size=4, workers=0))
    assert_same(all_rows(Index.open(tmp_path / "ray")), all_rows(local))


class Boom(Exception):
    pass


def test_ray_resume_after_failure_no_duplicates(ray_cluster, collection, tmp_path):
    idx = Index.create_or_open(tmp_path / "ray", embedder(), store="lancedb")
    committed = []

    def crash(p):  # the driver dies mid-run, after at least one commit
        committed.append(p.embedded)
        if p.embedded >= 8:
            raise Boom()
    with pytest.raises(Boom):
        build_index_ray(idx, [collection], RayOptions(**ROPTS), progress=crash)
    after_crash = Index.open(tmp_path / "ray")
    n = after_crash.store.count()
    assert 8 <= n < 20  # committed work is kept, the rest is not visible
    assert len(all_rows(after_crash)) == n

    rep = build_index_ray(idx, [collection], RayOptions(**ROPTS))
    assert rep.unchanged == n and rep.embedded == 20 - n
    final = all_rows(Index.open(tmp_path / "ray"))
    assert len(final) == 20  # no duplicates, nothing missing
    assert set(final) == {str(p) for p in collection.rglob("*") if p.is_file() and p.name != "broken.jpg"}


def test_ray_engine_builds_ann_index(ray_cluster, tmp_path):
    """Writing finishes, then the ANN index is built once (tiny threshold to keep the test small)."""
    coll = tmp_path / "many"
    coll.mkdir()
    rng = np.random.default_rng(0)
    for i in range(300):
        arr = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
        Image.fromarray(arr).save(coll / f"n{i:03d}.png")
    idx = Index.create_or_open(tmp_path / "ray", embedder(), store="lancedb",
                               store_options={"ann": "ivf_pq", "ann_min_rows": 256})
    opts = RayOptions(**{**ROPTS, "batch_size": 64, "rows_per_fragment": 100, "commit_every": 200})
    rep = build_index_ray(idx, [coll], opts)
    assert rep.total_items == 300
    d = Index.open(tmp_path / "ray").store.describe()
    assert "IVF" in d["index"].upper() and d.get("unindexed_rows", 0) == 0


def test_cli_ray_engine_s3_sources_to_s3_index(ray_cluster, s3_env, collection, tmp_path, capsys):
    """`imgrag index --engine ray s3://…/photos --index s3://…/idx`: objects read by Ray tasks, fragments
    written to the bucket; vectors equal the local indexer's on the same files."""
    from imgrag.app.cli import main

    _, client = s3_env
    files = sorted(p for p in (collection / "animals").iterdir())
    for f in files:
        client.upload_file(str(f), BUCKET, f"photos/animals/{f.name}")
    client.put_object(Bucket=BUCKET, Key="photos/notes.txt", Body=b"not an image: ignored by extension")
    uri = f"s3://{BUCKET}/idx"
    rc = main(["index", f"s3://{BUCKET}/photos/", "--index", uri, "--engine", "ray", "--model", MODEL,
               "--batch-size", "4", "--device", "cpu", "--precision", "fp32", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    rep = json.loads(out.out)
    assert (rep["embedded"], rep["total_items"], rep["skipped"]) == (len(files), len(files), 0)
    remote = all_rows(Index.open(uri))
    assert set(remote) == {f"s3://{BUCKET}/photos/animals/{f.name}" for f in files}

    local = Index.create_or_open(tmp_path / "local", embedder(), store="lancedb")
    build_index(local, [collection / "animals"], IndexOptions(batch_size=4, workers=0))
    by_name = {Path(k).name: v for k, v in all_rows(local).items()}
    for k, r in remote.items():
        lr = by_name[k.rsplit("/", 1)[1]]
        assert (r["hash"], r["width"], r["height"], r["size"]) == (lr["hash"], lr["width"], lr["height"], lr["size"])
        assert float(np.dot(r["vector"], lr["vector"])) >= 0.9999

    # rerun through the CLI: unchanged objects (size + mtime from the listing) are skipped
    rc = main(["index", f"s3://{BUCKET}/photos/", "--index", uri, "--engine", "ray", "--json"])
    rep2 = json.loads(capsys.readouterr().out)
    assert rc == 0 and (rep2["embedded"], rep2["unchanged"]) == (0, len(files))
