#!/usr/bin/env python3
"""Named groups at scale: time and peak memory of ``imgrag groups``' library call on synthetic clustered vectors.

    python bench/groups.py [--items 100000] [--clusters 20] [--dim 512] [--store lancedb|faiss] [--k K]
                           [--seeds 0 1 2 3]

Builds a store of ``--items`` unit vectors around ``--clusters`` random centres (sizes from 1x to 3x of each
other; each vector's cosine to its centre is about 0.7), then, in a child process whose peak RSS is read, runs
:func:`imgrag.retrieval.queries.groups.cluster_store` with k chosen automatically (or ``--k``) and names the
groups from 1,000 labels (ImageNet-sized) of which ``--clusters`` are text vectors near the planted centres.
Prints the stage times, the chosen k, the adjusted Rand index of the groups against the planted clusters,
how many groups got their own centre's label, and the peak RSS before and after.
"""

from __future__ import annotations

import argparse
import json
import resource
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _planted(n: int, clusters: int, dim: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = np.linspace(1.0, 3.0, clusters)
    truth = rng.choice(clusters, size=n, p=weights / weights.sum())
    return centres, truth


def _ari(a, b) -> float:
    import numpy as np

    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)

    def comb(x):
        return x * (x - 1) / 2

    s_ij, s_a, s_b = comb(table).sum(), comb(table.sum(1)).sum(), comb(table.sum(0)).sum()
    expected = s_a * s_b / comb(len(a))
    return float((s_ij - expected) / ((s_a + s_b) / 2 - expected))


def _child(n: int, clusters: int, dim: int, store_kind: str, k: int | None, seeds: tuple[int, ...] = (0,)) -> None:
    import numpy as np

    from imgrag.retrieval.embedders.base import Embedder, l2_normalize
    from imgrag.retrieval.queries.groups import GroupOptions, cluster_store
    from imgrag.retrieval.stores import make_rows, open_store
    from imgrag.retrieval.stores.base import vectors_of

    centres, truth = _planted(n, clusters, dim)
    root = Path(tempfile.mkdtemp(prefix="imgrag-groups-"))
    store = open_store(store_kind, root / store_kind, dim)
    rng = np.random.default_rng(1)
    tb = time.perf_counter()
    for i in range(0, n, 20_000):
        t = truth[i:i + 20_000]
        v = centres[t] + rng.standard_normal((len(t), dim)).astype(np.float32) / np.sqrt(dim)
        store.upsert(make_rows([{"id": f"/x/{j:07d}.jpg", "path": f"/x/{j:07d}.jpg"}
                                for j in range(i, i + len(t))], l2_normalize(v)))
    store.optimize()
    build_s = time.perf_counter() - tb
    labels = [f"planted {j}" for j in range(clusters)] + [f"label {j}" for j in range(1000 - clusters)]

    class Texts(Embedder):
        """Label vectors: the planted names near their centres, the other 980 random."""

        model_id = "bench-texts"
        dim = property(lambda self: centres.shape[1])
        image_size = property(lambda self: 16)

        def fingerprint(self) -> dict:
            return {"model": self.model_id}

        def image_transform(self):  # pragma: no cover
            raise NotImplementedError

        def embed_pixels(self, pixels):  # pragma: no cover
            raise NotImplementedError

        def embed_texts(self, texts):
            out = []
            for t in texts:
                word = t.removeprefix("a photo of a ").rstrip(".")
                r = np.random.default_rng(zlib.crc32(word.encode()))
                v = r.standard_normal(dim).astype(np.float32)
                if word.startswith("planted "):
                    v = centres[int(word.split()[1])] + 0.7 * v / np.sqrt(dim)
                out.append(v)
            return l2_normalize(np.stack(out))

    for seed in seeds:  # one store, several seeds: how much k and the ARI depend on the seed
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        rep = cluster_store(store, GroupOptions(k=k, seed=seed), Texts(), labels)
        secs = time.perf_counter() - t0
        # quality: each stored vector's group against its planted cluster (ids are in planted order)
        found = np.empty(n, np.int64)
        for b in store.scan(columns=["id", "vector"], batch_size=20_000):
            ids = np.array([int(x[3:10]) for x in b.column("id").to_pylist()])
            found[ids] = (vectors_of(b.column("vector"), dim) @ rep.centroids.T).argmax(axis=1)
        own = sum(1 for j, g in enumerate(rep.groups)
                  if g.name is not None and g.name.startswith("planted ")
                  and np.bincount(truth[found == j], minlength=clusters).argmax() == int(g.name.split()[1]))
        print(json.dumps({"seed": seed, "load_avg_1min": round(os.getloadavg()[0], 1), "items": rep.items,
                          "store": store_kind, "dim": dim, "planted_k": clusters, "k": rep.k,
                          "k_auto": rep.k_auto, "sample": rep.sample, "ari": round(_ari(found, truth), 4),
                          "groups_named_by_own_centre": own, "build_s": round(build_s, 1), "total_s": round(secs, 1),
                          "seconds": {a: round(b, 2) for a, b in rep.seconds.items()},
                          "peak_rss_mib_before": round(rss0 / 1024),
                          "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--clusters", type=int, default=20)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--store", choices=["lancedb", "faiss"], default="lancedb")
    p.add_argument("--k", type=int, default=None, help="fixed k (default: chosen automatically)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="GroupOptions seeds, one run each")
    args = p.parse_args()
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import groups; "
            f"groups._child({args.items}, {args.clusters}, {args.dim}, {args.store!r}, {args.k!r}, {tuple(args.seeds)!r})")
    subprocess.run([sys.executable, "-c", code], check=True)


if __name__ == "__main__":
    main()
