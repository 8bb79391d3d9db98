"""Vector search at scale: FAISS Flat / HNSW / IVF+SQ8 / IVF+PQ and LanceDB IVF_PQ / IVF_HNSW_SQ.

Data: N × 512 L2-normalised float32 vectors, synthetic but clustered like real image embeddings
(seeded): 2,000 clusters of Zipf-distributed sizes, an anisotropic spectrum (variance of component
i ∝ 1/i, so the intrinsic dimension is ≈ 28, randomly rotated), a shared mean direction (random
pairs have cosine ≈ 0.3, like CLIP image vectors) and per-point noise. Queries are fresh draws from
the same distribution. Ground truth is exact inner-product top-10.

For every configuration and search parameter: build time (train + add / create_index), peak RSS
of the build, memory of the loaded index (RSS growth of a fresh process after loading it and
running the warm-up queries), index size on disk, p50/p99 latency of single queries (one query per
call, k = 10), batched throughput (all queries in one call) and recall@10 against exact search.

Each build and each measurement runs in its own process (memory figures are not polluted by the
data set or other indexes). Vectors, queries, ground truth and built indexes are cached under
bench/.cache/search/ (re-runs only measure; ``--rebuild`` rebuilds).

LanceDB indexes are built with the parameters imgrag's LanceStore uses (partitions from the row
count, 8 dimensions per PQ sub-vector, refine factor, nprobes, ef); FAISS with the factory strings
docs/stores.md recommends, nlist ≈ √N.

    python bench/search_scale.py                          # CI scale: 100,000 vectors
    python bench/search_scale.py --n 1000000              # the issue's scale (LanceDB builds take many minutes)
    python bench/search_scale.py --n 1000000 --configs faiss-hnsw32-sq8,lance-ivf_pq
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

K = 10
N_CLUSTERS = 2000


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def _generator(dim: int, seed: int):
    """(sample(rng, n) -> (n, dim) float32 normalised) for one fixed distribution (seeded)."""
    rng = np.random.default_rng(seed)
    spec = (np.arange(1, dim + 1, dtype=np.float64) ** -0.5).astype(np.float32)  # std of component i
    rot, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    rot = rot.astype(np.float32)
    centers = rng.standard_normal((N_CLUSTERS, dim), dtype=np.float32) * spec
    mean = rng.standard_normal(dim, dtype=np.float32) * spec
    mean *= 0.7 * np.linalg.norm(centers, axis=1).mean() / np.linalg.norm(mean)
    p = 1.0 / np.arange(1, N_CLUSTERS + 1) ** 0.8
    p /= p.sum()
    sigma = 0.55

    def sample(r: np.random.Generator, n: int) -> np.ndarray:
        lab = r.choice(N_CLUSTERS, size=n, p=p)
        x = centers[lab] + mean + sigma * r.standard_normal((n, dim), dtype=np.float32) * spec
        x = x @ rot
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32)

    return sample


def data_dir(n: int, dim: int, seed: int) -> Path:
    return C.CACHE / "search" / f"n{n}-d{dim}-s{seed}"


def ensure_data(n: int, dim: int, seed: int, nq: int) -> Path:
    d = data_dir(n, dim, seed)
    d.mkdir(parents=True, exist_ok=True)
    base, qf, gt = d / "base.npy", d / f"queries-{nq}.npy", d / f"gt-{nq}.npy"
    sample = _generator(dim, seed)
    if not base.exists():
        t = time.perf_counter()
        tmp = d / "base.npy.tmp"
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        r = np.random.default_rng(seed + 1)
        for off in range(0, n, 100_000):
            m = min(100_000, n - off)
            mm[off:off + m] = sample(r, m)
        mm.flush()
        del mm
        os.replace(tmp, base)
        C.log(f"generated {n} x {dim} vectors in {time.perf_counter() - t:.0f}s")
    if not qf.exists():
        np.save(qf, sample(np.random.default_rng(seed + 2), nq))
    if not gt.exists():
        t = time.perf_counter()
        X = np.load(base, mmap_mode="r")
        Q = np.load(qf)
        bestD = np.full((nq, 0), -np.inf, np.float32)
        bestI = np.zeros((nq, 0), np.int64)
        for off in range(0, n, 50_000):
            s = Q @ np.asarray(X[off:off + 50_000]).T
            D = np.concatenate([bestD, s], axis=1)
            I = np.concatenate([bestI, np.broadcast_to(np.arange(off, off + s.shape[1]), s.shape)], axis=1)
            part = np.argpartition(-D, K - 1, axis=1)[:, :K]
            bestD, bestI = np.take_along_axis(D, part, 1), np.take_along_axis(I, part, 1)
        order = np.argsort(-bestD, axis=1)
        np.save(gt, np.take_along_axis(bestI, order, 1))
        C.log(f"exact top-{K} for {nq} queries in {time.perf_counter() - t:.0f}s")
    return d


def data_stats(d: Path, nq: int) -> dict:
    X = np.load(d / "base.npy", mmap_mode="r")
    Q = np.load(d / f"queries-{nq}.npy")
    gt = np.load(d / f"gt-{nq}.npy")
    r = np.random.default_rng(0)
    a = np.asarray(X[np.sort(r.choice(len(X), 2000, replace=False))])
    rand = (a[:1000] * a[1000:]).sum(1)
    top1 = np.einsum("ij,ij->i", Q[:200], np.asarray(X[gt[:200, 0]]))
    top10 = np.einsum("ij,ij->i", Q[:200], np.asarray(X[gt[:200, -1]]))
    return {"random_pair_cos_mean": float(rand.mean()), "query_top1_cos_median": float(np.median(top1)),
            "query_top10_cos_median": float(np.median(top10))}


# ------------------------------------------------------------------------------------------------
# configurations
# ------------------------------------------------------------------------------------------------
def configs(n: int) -> dict[str, dict]:
    nlist = 1 << max(4, round(math.log2(max(16, math.sqrt(n)))))  # ≈ √n, a power of two (1024 at 1M)
    pq_m = 64
    out = {
        "faiss-flat": {"kind": "faiss", "factory": "Flat", "params": [None]},
        "faiss-hnsw32-sq8": {"kind": "faiss", "factory": "HNSW32,SQ8", "efc": 40, "params": [16, 32, 64, 128, 256]},
        "faiss-ivf-sq8": {"kind": "faiss", "factory": f"IVF{nlist},SQ8", "params": [8, 16, 32, 64, 128]},
        "faiss-ivf-pq": {"kind": "faiss", "factory": f"IVF{nlist},PQ{pq_m}", "params": [8, 16, 32, 64, 128]},
        "faiss-hnsw32": {"kind": "faiss", "factory": "HNSW32", "efc": 40, "params": [16, 32, 64, 128, 256]},
        "lance-ivf_pq": {"kind": "lance", "ann": "ivf_pq",
                         "params": [(20, 10), (10, 10), (40, 10), (20, 20), (40, 40), (20, 0)]},
        "lance-ivf_hnsw_sq": {"kind": "lance", "ann": "ivf_hnsw_sq", "params": [(1, 32), (1, 64), (1, 128)]},
    }
    return out


def _param_label(cfg: dict, p) -> str:
    if p is None:
        return "exact"
    f = cfg.get("factory", "")
    if cfg["kind"] == "faiss":
        return f"efSearch={p}" if "HNSW" in f else f"nprobe={p}"
    if cfg["ann"] == "ivf_pq":
        return f"nprobes={p[0]}, refine={p[1]}"
    return f"ef={p[1]}, refine=2"


def lance_params(n: int, dim: int, ann: str) -> dict:
    """What imgrag's LanceStore would build for an n-row table (retrieval/stores/lance.py)."""
    C.ensure_imgrag_importable()
    from imgrag.retrieval.stores.lance import LanceStore, _sub_vectors

    s = LanceStore.__new__(LanceStore)
    s.ann = ann
    return {"num_partitions": LanceStore._partitions(s, n), "num_sub_vectors": _sub_vectors(dim)}


def cache_path(d: Path, name: str) -> Path:
    return d / ("index-" + name)


# ------------------------------------------------------------------------------------------------
# child: build
# ------------------------------------------------------------------------------------------------
def child_build(a, name: str) -> dict:
    d = data_dir(a.n, a.dim, a.seed)
    cfg = configs(a.n)[name]
    X = np.load(d / "base.npy", mmap_mode="r")
    n, dim = X.shape
    out_path = cache_path(d, name)
    t0 = time.perf_counter()
    info: dict = {}
    if cfg["kind"] == "faiss":
        import faiss

        idx = faiss.index_factory(dim, cfg["factory"], faiss.METRIC_INNER_PRODUCT)
        if "efc" in cfg:
            faiss.downcast_index(idx).hnsw.efConstruction = cfg["efc"]
            info["efConstruction"] = cfg["efc"]
        if not idx.is_trained:
            ivf = faiss.extract_index_ivf(idx) if "IVF" in cfg["factory"] else None
            if ivf is not None and hasattr(faiss.downcast_index(ivf), "do_polysemous_training"):
                faiss.downcast_index(ivf).do_polysemous_training = False  # minutes of training, unused here
            ntrain = min(n, 64 * ivf.nlist) if ivf is not None else min(n, 100_000)
            sel = np.sort(np.random.default_rng(0).choice(n, ntrain, replace=False))
            tt = time.perf_counter()
            idx.train(np.ascontiguousarray(X[sel]))
            info["train_s"] = time.perf_counter() - tt
            info["train_rows"] = ntrain
        for off in range(0, n, 100_000):
            idx.add(np.ascontiguousarray(X[off:off + 100_000]))
        info["build_s"] = time.perf_counter() - t0
        tmp = str(out_path) + ".tmp"
        faiss.write_index(idx, tmp)
        os.replace(tmp, out_path)
    else:
        import lancedb
        import pyarrow as pa
        from lancedb.index import HnswSq, IvfPq

        shutil.rmtree(out_path, ignore_errors=True)
        tmp = Path(str(out_path) + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        db = lancedb.connect(str(tmp))
        schema = pa.schema([pa.field("id", pa.int64()), pa.field("vector", pa.list_(pa.float32(), dim))])

        def batches():
            for off in range(0, n, 50_000):
                v = np.ascontiguousarray(X[off:off + 50_000])
                yield pa.record_batch([pa.array(np.arange(off, off + len(v))),
                                       pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), dim)], schema=schema)

        tw = time.perf_counter()
        tbl = db.create_table("vectors", data=pa.RecordBatchReader.from_batches(schema, batches()), schema=schema)
        info["write_s"] = time.perf_counter() - tw
        lp = lance_params(n, dim, cfg["ann"])
        info.update(lp)
        ti = time.perf_counter()
        if cfg["ann"] == "ivf_pq":
            ic = IvfPq(distance_type="dot", num_partitions=lp["num_partitions"], num_sub_vectors=lp["num_sub_vectors"])
        else:
            ic = HnswSq(distance_type="dot", num_partitions=lp["num_partitions"])
        tbl.create_index("vector", config=ic)
        info["index_s"] = time.perf_counter() - ti
        info["build_s"] = time.perf_counter() - t0  # write + index
        del tbl, db
        os.replace(tmp, out_path)
    info["build_peak_rss_mib"] = C.peak_rss_mib()
    return info


# ------------------------------------------------------------------------------------------------
# child: measure
# ------------------------------------------------------------------------------------------------
def _recall(I: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(a[:K].tolist()) & set(b[:K].tolist())) / K for a, b in zip(I, gt)]))


def child_search(a, name: str) -> dict:
    d = data_dir(a.n, a.dim, a.seed)
    cfg = configs(a.n)[name]
    Q = np.load(d / f"queries-{a.nq}.npy")
    gt = np.load(d / f"gt-{a.nq}.npy")
    path = cache_path(d, name)
    if cfg["kind"] == "faiss":
        import faiss
    else:
        import lancedb  # noqa: F401
        import pyarrow  # noqa: F401
    rss0 = C.rss_mib()
    t = time.perf_counter()
    if cfg["kind"] == "faiss":
        idx = faiss.read_index(str(path))
        base = faiss.downcast_index(idx)
        ivf = faiss.extract_index_ivf(idx) if "IVF" in cfg["factory"] else None

        def set_param(p):
            if p is None:
                return
            if ivf is not None:
                ivf.nprobe = p
            else:
                base.hnsw.efSearch = max(p, K)

        def search(q):
            return idx.search(q, K)[1]
    else:
        import lancedb

        tbl = lancedb.connect(str(path)).open_table("vectors")
        cur = {"p": None}

        def set_param(p):
            cur["p"] = p

        def search(q):
            nprobes, r = cur["p"]
            qb = tbl.search(q if len(q) > 1 else q[0], vector_column_name="vector").distance_type("dot").limit(K)
            qb = qb.select(["id"]).minimum_nprobes(nprobes).maximum_nprobes(0)
            if cfg["ann"] == "ivf_pq":
                if r:
                    qb = qb.refine_factor(r)
            else:
                qb = qb.ef(r).refine_factor(2)
            res = qb.to_arrow()
            ids = res["id"].to_numpy()
            if len(q) == 1:
                return ids[None, :]
            qi = res["query_index"].to_numpy()
            out = np.full((len(q), K), -1, np.int64)
            dist = res["_distance"].to_numpy()
            for i in range(len(q)):
                sel = np.flatnonzero(qi == i)
                sel = sel[np.argsort(dist[sel])][:K]
                out[i, :len(sel)] = ids[sel]
            return out
    load_s = time.perf_counter() - t
    params = cfg["params"]
    set_param(params[0])
    for i in range(min(20, a.nq)):  # warm-up (lance loads index parts lazily)
        search(Q[i:i + 1])
    mem = C.rss_mib() - rss0  # what a server holds for this index: loaded + warm, before any big batch
    # Single queries, interleaved: in each of 5 rounds every setting answers its share of the
    # queries, so load from other processes on a shared machine hits all settings alike.
    n_single = min(a.single, 50) if cfg.get("factory") == "Flat" else a.single
    lat: dict[int, list[float]] = {j: [] for j in range(len(params))}
    rounds = 5 if n_single >= 25 else 1
    for rnd in range(rounds):
        for j, p in enumerate(params):
            set_param(p)
            if rnd == 0 and j:
                for i in range(min(5, a.nq)):
                    search(Q[i:i + 1])
            for i in range(rnd * n_single // rounds, (rnd + 1) * n_single // rounds):
                q = Q[i % len(Q):i % len(Q) + 1]
                t = time.perf_counter_ns()
                search(q)
                lat[j].append((time.perf_counter_ns() - t) / 1e6)
    rows = []
    for j, p in enumerate(params):
        set_param(p)
        # batched: all queries in one call, median of 3 (1 for exact search)
        reps = []
        I = None
        for _ in range(1 if p is None else 3):
            t = time.perf_counter()
            I = search(Q)
            reps.append(time.perf_counter() - t)
        bt = float(np.median(reps))
        rows.append({"param": _param_label(cfg, p), "p50_ms": C.pct(lat[j], 50), "p99_ms": C.pct(lat[j], 99),
                     "single_n": len(lat[j]), "batch_qps": len(Q) / bt, "recall10": _recall(I, gt)})
    disk = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).is_dir() \
        else Path(path).stat().st_size
    return {"load_s": load_s, "mem_mib": mem, "rss_end_mib": C.rss_mib() - rss0, "peak_rss_mib": C.peak_rss_mib(),
            "rss_base_mib": rss0,
            "disk_mib": disk / 2**20, "rows": rows}


# ------------------------------------------------------------------------------------------------
def run_child(a, mode: str, name: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--name", name, "--n", str(a.n), "--dim", str(a.dim),
           "--seed", str(a.seed), "--nq", str(a.nq), "--single", str(a.single)]
    env = {**os.environ}
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not line:
        raise RuntimeError(f"{mode} {name} failed ({p.returncode}): {p.stderr[-2000:]}")
    return json.loads(line[-1][7:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="vectors (default 100000; the issue's scale is 1000000)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nq", type=int, default=1000, help="queries for recall and batched throughput (default 1000)")
    ap.add_argument("--single", type=int, default=300, help="single-query latency samples per setting (default 300)")
    ap.add_argument("--configs", default="all", help="comma-separated subset of: " + ",".join(configs(10**6)))
    ap.add_argument("--threads", type=int, default=None, help="OMP threads for FAISS (default: all cores)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild cached indexes")
    ap.add_argument("--report", action="store_true",
                    help="only print the table from the measurements cached by earlier runs (no building or timing)")
    ap.add_argument("--child", choices=["build", "search"], help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        r = child_build(a, a.name) if a.child == "build" else child_search(a, a.name)
        print("RESULT " + json.dumps(r), flush=True)
        return 0

    names = list(configs(a.n)) if a.configs == "all" else [s.strip() for s in a.configs.split(",") if s.strip()]
    unknown = [s for s in names if s not in configs(a.n)]
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; known: {', '.join(configs(a.n))}")
    if a.report:
        d = data_dir(a.n, a.dim, a.seed)
        results = {nm: json.loads((d / f"measured-{nm}.json").read_text()) for nm in names
                   if (d / f"measured-{nm}.json").exists()}
        report(a, results)
        return 0
    d = ensure_data(a.n, a.dim, a.seed, a.nq)
    stats = data_stats(d, a.nq)
    C.log(f"data: random-pair cosine {stats['random_pair_cos_mean']:.2f}, query top-1 cosine "
          f"{stats['query_top1_cos_median']:.2f}, top-10 {stats['query_top10_cos_median']:.2f} (medians)")
    results: dict = {}
    built_path = d / "builds.json"
    builds = json.loads(built_path.read_text()) if built_path.exists() else {}
    for name in names:
        cp = cache_path(d, name)
        if a.rebuild or not cp.exists() or name not in builds:
            C.log(f"{name}: building ...")
            builds[name] = run_child(a, "build", name)
            built_path.write_text(json.dumps(builds, indent=1))
            C.log(f"{name}: built in {builds[name]['build_s']:.0f}s")
        else:
            C.log(f"{name}: cached build ({builds[name]['build_s']:.0f}s when built)")
        C.log(f"{name}: measuring ...")
        s = run_child(a, "search", name)
        results[name] = {"build": builds[name], **s}
        (d / f"measured-{name}.json").write_text(json.dumps(results[name], indent=1))
        best = max(s["rows"], key=lambda r: r["recall10"])
        C.log(f"{name}: memory {s['mem_mib']:.0f} MiB, best recall {best['recall10']:.3f} at p50 {best['p50_ms']:.2f} ms")
    report(a, results)
    C.record("search_scale", {"data": stats, "results": results},
             {"n": a.n, "dim": a.dim, "seed": a.seed, "nq": a.nq, "single": a.single, "configs": names,
              "threads": a.threads})
    return 0


def report(a, results: dict) -> None:
    cfgs = configs(a.n)
    rows = []
    for name, r in results.items():
        cfg = cfgs[name]
        label = f"FAISS {cfg['factory']}" if cfg["kind"] == "faiss" else f"LanceDB {cfg['ann'].upper()}"
        for i, row in enumerate(r["rows"]):
            rows.append([label if i == 0 else "", row["param"], r["build"]["build_s"] if i == 0 else None,
                         r["mem_mib"] if i == 0 else None, r["disk_mib"] if i == 0 else None,
                         row["p50_ms"], row["p99_ms"], row["batch_qps"], row["recall10"],
                         "yes" if row["p50_ms"] <= 2.0 and row["recall10"] >= 0.95 and r["mem_mib"] <= 1024 else ""])
    C.table(["index", "search setting", "build s", "memory MiB", "disk MiB", "p50 ms", "p99 ms",
             f"batch of {a.nq} q/s", "recall@10", "goal met"], rows,
            title=f"Search at scale: {a.n:,} × {a.dim} clustered vectors, k = {K}, {a.nq} queries "
                  f"({a.single} single-query timings per setting)")


if __name__ == "__main__":
    sys.exit(main())
