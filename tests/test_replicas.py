"""One model replica per device (indexer/replicas.py): dispatch order, errors, and an indexing run on two
CPU replicas that gives exactly the rows and vectors of one; default batch/workers from the GPU plan."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from imgrag.indexer.gpu_plan import GIB, LOCAL_CPU_BATCH, default_batch_size, local_defaults
from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.indexer.replicas import (ReplicaError, ReplicaPool, build_replicas, parse_devices, precision_of,
                                     resolve_devices)
from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.index import Index

from fakes import FakeEmbedder
from reliability import all_rows
from test_indexer import make_collection

REPO = Path(__file__).resolve().parents[1]


# --- the dispatcher ------------------------------------------------------------------------------
def test_pool_round_robin_in_order():
    """Jobs go to replica k mod n and come back in submission order, even when a later job finishes
    first (replica 0 is slow here)."""
    seen: list[tuple[int, int, str]] = []

    def work(i: int, job: int):
        if i == 0:
            time.sleep(0.01)
        seen.append((job, i, threading.current_thread().name))
        return job * 10

    with ReplicaPool(["cpu", "cpu", "cpu"], work) as pool:
        out = list(pool.run(range(20)))
    assert out == [(k, k * 10) for k in range(20)]
    assert sorted((job, i) for job, i, _ in seen) == [(k, k % 3) for k in range(20)]
    names = {i: {n for _, j, n in seen if j == i} for i in range(3)}
    assert all(len(v) == 1 for v in names.values()) and len(set().union(*names.values())) == 3  # a thread each


def test_pool_single_replica_is_inline():
    got = []
    with ReplicaPool(["cpu"], lambda i, j: got.append(threading.current_thread()) or j) as pool:
        assert [r for _, r in pool.run([1, 2])] == [1, 2]
    assert got == [threading.current_thread()] * 2


def test_pool_error_surfaces_and_stops():
    """A replica's exception comes back as ReplicaError naming the device when its job's turn comes; no
    later result is handed out and no replica thread survives the pool."""
    def work(i: int, job: int):
        if job == 5:
            raise ValueError("out of memory (simulated)")
        return job

    got = []
    with pytest.raises(ReplicaError, match=r"replica on cuda:1 \(replica 2 of 2\) failed: ValueError: out of "
                                           r"memory \(simulated\)") as ei:
        with ReplicaPool(["cuda:0", "cuda:1"], work) as pool:
            for job, _ in pool.run(range(100)):
                got.append(job)
    assert got == [0, 1, 2, 3, 4]
    assert isinstance(ei.value, ImgragError) and isinstance(ei.value.__cause__, ValueError)
    assert not [t for t in threading.enumerate() if t.name.startswith("imgrag-replica")]


def test_parse_and_resolve_devices():
    assert parse_devices("cuda:0, cuda:1") == ("cuda:0", "cuda:1")
    assert parse_devices("cpu,cpu") == ("cpu", "cpu") and parse_devices("all") == ("all",)
    for bad in ("", "gpu", "cuda:x", "cpu:1", "all,cpu"):
        with pytest.raises(ImgragError):
            parse_devices(bad)
    four = lambda: 4  # noqa: E731
    assert resolve_devices(None, "cuda", four) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]  # plain cuda: all
    assert resolve_devices(None, "cuda:2", four) == ["cuda:2"]  # an explicit GPU: that one alone
    assert resolve_devices(None, "cuda", lambda: 1) == ["cuda"]
    assert resolve_devices(None, "cpu", four) == ["cpu"]
    assert resolve_devices(("all",), "cuda", lambda: 2) == ["cuda:0", "cuda:1"]
    assert resolve_devices(("cpu", "cpu"), "cpu", lambda: 0) == ["cpu", "cpu"]
    with pytest.raises(ImgragError, match="cuda:2 is not visible"):
        resolve_devices(("cuda:0", "cuda:2"), "cuda:0", lambda: 2)
    with pytest.raises(ImgragError, match="no CUDA GPU"):
        resolve_devices(("all",), "cpu", lambda: 0)


def test_build_replicas_reuses_the_loaded_model():
    primary = FakeEmbedder()
    made = []

    def make(d):
        made.append(d)
        return FakeEmbedder()
    reps = build_replicas(primary, ["cpu", "cpu"], make)
    assert reps[0] is primary and reps[1] is not primary and made == ["cpu"]
    assert precision_of(primary) == "auto"


# --- batch and workers from the machine ----------------------------------------------------------
@pytest.mark.parametrize("devices, facts, given, want", [
    (["cpu"], (0, 0, 2), (None, None), (LOCAL_CPU_BATCH, None)),  # CPU: today's defaults
    (["cpu"], (0, 0, 2), (16, 1), (16, 1)),  # given values win
    (["cuda"], (1, 80 * GIB, 16), (None, None), (512, 15)),  # one H100: batch from memory, cores - 1
    (["cuda:0", "cuda:1"], (2, 141 * GIB, 32), (None, None), (1024, 30)),  # per replica; cores - replicas
    (["cuda:0"], (1, 16 * GIB, 4), (None, 2), (128, 2)),
    (["cuda:0", "cuda:1", "cuda:2", "cuda:3"], (4, 80 * GIB, 256), (64, None), (64, 64)),  # workers capped
])
def test_local_defaults(devices, facts, given, want):
    from imgrag.indexer.loader import default_workers

    got = local_defaults(*given, devices, facts=facts)
    assert got == (want[0], default_workers("cpu") if want[1] is None else want[1])


def test_default_batch_size_per_device():
    assert default_batch_size("cpu") == LOCAL_CPU_BATCH
    assert default_batch_size("cuda:1", facts=(2, 24 * GIB, 8)) == 256


# --- indexing on two replicas --------------------------------------------------------------------
def _vectors(idx: Index) -> dict[str, np.ndarray]:
    return {i: np.asarray(r["vector"], np.float32) for i, r in all_rows(idx).items()}


class FailingFake(FakeEmbedder):
    def embed_pixels(self, pixels):
        raise RuntimeError("CUDA error: an illegal memory access (simulated)")


@pytest.mark.parametrize("kind", ["lancedb", "faiss"])
def test_two_replicas_same_rows_as_one(tmp_path, kind):
    """Two replicas (one slow, so batches come back out of order) write the rows one replica writes, with
    the same reuse of copies met in later batches (their vector comes from the in-flight source)."""
    coll = tmp_path / "photos"
    paths = make_collection(coll, n=14)
    copies = coll / "zz_copies"
    copies.mkdir()
    for p in paths[:5]:
        shutil.copy(p, copies / p.name)

    class SlowFake(FakeEmbedder):
        def embed_pixels(self, pixels):
            time.sleep(0.02)
            return super().embed_pixels(pixels)

    reps = []
    one = Index.create_or_open(tmp_path / "one", FakeEmbedder(), store=kind)
    r1 = build_index(one, [coll], IndexOptions(batch_size=2, workers=0, commit_every=3))
    two = Index.create_or_open(tmp_path / "two", SlowFake(), store=kind)
    r2 = build_index(two, [coll], IndexOptions(batch_size=2, workers=0, commit_every=3, devices=("cpu", "cpu"),
                                               replica_factory=lambda d: reps.append(FakeEmbedder()) or reps[-1]))
    assert len(reps) == 1 and reps[0].calls > 0 and two.embedder.calls > 0  # both replicas worked
    assert (r2.embedded, r2.reused, r2.total_items) == (r1.embedded, r1.reused, r1.total_items) == (14, 5, 19)
    v1, v2 = _vectors(one), _vectors(two)
    assert sorted(v1) == sorted(v2) and len(v2) == 19
    for i in v1:
        np.testing.assert_allclose(v1[i], v2[i], atol=1e-6)


def test_replica_failure_commits_nothing_of_it_and_resumes(tmp_path):
    """A replica that fails: a ReplicaError, the batches before it committed in order, nothing of the failed
    batch or later ones; the next run continues without duplicates."""
    coll = tmp_path / "photos"
    make_collection(coll, n=12)
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store="faiss")
    opts = IndexOptions(batch_size=2, workers=0, commit_every=1, devices=("cpu", "cpu"),
                        replica_factory=lambda d: FailingFake())
    with pytest.raises(ReplicaError, match="replica on cpu \\(replica 2 of 2\\) failed: RuntimeError: CUDA error"):
        build_index(idx, [coll], opts)
    first = sorted(_vectors(idx))
    assert len(first) == 2  # batch 0 (replica 1) only: batch 1 failed on replica 2
    rep = build_index(idx, [coll], IndexOptions(batch_size=2, workers=0, devices=("cpu", "cpu"),
                                                replica_factory=lambda d: FakeEmbedder()))
    assert rep.embedded == 10 and rep.unchanged == 2 and rep.total_items == 12
    assert len(_vectors(idx)) == 12


def test_cli_devices_cpu_cpu_matches_one_replica(tmp_path, tiny_model_configs, capsys):
    """`imgrag index data/samples --devices cpu,cpu` on a real (tiny, random-init) model: the same rows and
    vectors as one replica, no duplicates; a re-run finds everything unchanged."""
    import json

    from imgrag.app.cli import main

    samples = REPO / "data" / "samples"
    base = ["index", str(samples), "--model", "imgrag-tiny-clip", "--batch-size", "8", "--workers", "1", "--json"]
    assert main([*base, "--index", str(tmp_path / "one")]) == 0
    one = json.loads(capsys.readouterr().out)
    assert main([*base, "--index", str(tmp_path / "two"), "--devices", "cpu,cpu"]) == 0
    two = json.loads(capsys.readouterr().out)
    assert one["embedded"] == two["embedded"] > 50 and one["total_items"] == two["total_items"]
    v1, v2 = (_vectors(Index.open(tmp_path / n)) for n in ("one", "two"))
    assert sorted(v1) == sorted(v2) and len(v2) == two["total_items"]
    for i in v1:
        np.testing.assert_allclose(v1[i], v2[i], atol=1e-5)
    assert main([*base, "--index", str(tmp_path / "two"), "--devices", "cpu,cpu"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["embedded"] == 0 and again["total_items"] == two["total_items"]
    with pytest.raises(SystemExit) as e:  # the parser refuses it
        main([*base, "--index", str(tmp_path / "x"), "--devices", "gpu0"])
    assert e.value.code == 2 and "unknown device 'gpu0'" in capsys.readouterr().err
    assert main([*base, "--index", str(tmp_path / "x"), "--devices", "cpu,cpu", "--device", "cpu"]) == 2
    assert "--devices needs the local engine and no --device" in capsys.readouterr().err


def test_tensor_finish_on_each_replica(tmp_path, tiny_model_configs, monkeypatch):
    """The CUDA form of the tensor path (workers hand raw bytes/uint8 on, each replica decodes and resizes
    on its own device), run here with CPU devices: the vectors of the usual CPU tensor path."""
    import imgrag.indexer.pipeline as pipeline
    from imgrag.indexer.tensor_decode import Finisher, TensorCollate, tensor_loading
    from imgrag.retrieval.embedders.openclip import OpenClipEmbedder

    make = lambda d="cpu": OpenClipEmbedder("imgrag-tiny-clip", device=d, precision="fp32", batch_size=8)  # noqa: E731
    coll = tmp_path / "photos"
    make_collection(coll, n=10)
    ref = Index.create_or_open(tmp_path / "ref", make(), store="faiss")
    build_index(ref, [coll], IndexOptions(batch_size=3, workers=0, preprocess="tensor"))

    finished_in = []

    class Spy(Finisher):
        def __call__(self, results, raw):
            finished_in.append(threading.current_thread().name)
            return super().__call__(results, raw)

    def cuda_style(emb, device, ds_args, ds_kwargs):  # what tensor_loading gives on CUDA
        ds = tensor_loading(emb, device, ds_args, ds_kwargs)[0]
        return ds, TensorCollate(None), Spy(emb.tensor_transform(), device, ds.max_pixels)

    monkeypatch.setattr(pipeline, "tensor_loading", cuda_style)
    monkeypatch.setattr(pipeline, "Finisher", Spy)
    two = Index.create_or_open(tmp_path / "two", make(), store="faiss")
    rep = build_index(two, [coll], IndexOptions(batch_size=3, workers=0, preprocess="tensor", devices=("cpu", "cpu"),
                                                replica_factory=lambda d: make(d)))
    assert rep.embedded == 10 and len(finished_in) == 4  # 4 batches of ≤ 3, finished on their replica's thread
    assert sorted({n.rsplit("_", 1)[0] for n in finished_in}) == ["imgrag-replica-0", "imgrag-replica-1"]
    v1, v2 = _vectors(ref), _vectors(two)
    assert sorted(v1) == sorted(v2)
    for i in v1:
        np.testing.assert_allclose(v1[i], v2[i], atol=1e-5)
