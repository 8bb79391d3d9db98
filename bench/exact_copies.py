"""Exact copies on openclipart's PNG tree: how many items the model embeds vs reuse, and top-5 repeats.

    python bench/make_eval_sets.py openclipart /tmp/oc-eval     # once: fetches and extracts the .deb into bench/.cache
    python bench/exact_copies.py [PNG_ROOT] [INDEX_DIR] [--store lancedb|faiss]

Indexes with the test suite's fake embedder (tests/fakes.py): which files share a vector depends only on their
bytes, not on the model, and the fake costs nothing. Then 300 searches by a random item's stored vector (k=5)
count the lists that hold one content at two or more paths, with and without folding copies.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
DEFAULT_ROOT = HERE / ".cache" / "openclipart-png-extracted" / "usr" / "share" / "openclipart" / "png"


def main() -> None:
    from fakes import FakeEmbedder

    from imgrag.indexer.pipeline import IndexOptions, build_index
    from imgrag.retrieval.index import Index
    from imgrag.retrieval.queries.copies import copy_key
    from imgrag.retrieval.queries.search import search

    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", default=str(DEFAULT_ROOT))
    ap.add_argument("index", nargs="?", default="/tmp/oc-copies-idx")
    ap.add_argument("--store", default="lancedb", choices=["lancedb", "faiss"])
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args()
    emb = FakeEmbedder()
    idx = Index.create_or_open(args.index, emb, store=args.store)
    t = time.time()
    rep = build_index(idx, [args.root], IndexOptions(batch_size=64, workers=1))
    print(f"store={args.store} scanned={rep.scanned} embedded={rep.embedded} reused={rep.reused} "
          f"skipped={len(rep.skipped)} total={rep.total_items} model_images={emb.images_embedded} "
          f"s={time.time() - t:.0f}", flush=True)
    ids = idx.store.file_states()["id"].to_pylist()
    rows = idx.store.get(ids, columns=["id", "hash", "vector"]).to_pylist()
    by_hash: dict[str, int] = {}
    for r in rows:
        by_hash[r["hash"]] = by_hash.get(r["hash"], 0) + 1
    copied = [n for n in by_hash.values() if n > 1]
    print(f"contents={len(by_hash)} with_copies={len(copied)} max_paths={max(copied, default=1)}")
    random.seed(0)
    qs = random.sample(rows, min(args.queries, len(rows)))
    rep_all = rep_def = 0
    for r in qs:
        v = np.asarray(r["vector"], np.float32)
        a = search(idx, v, k=5, all_copies=True)
        d = search(idx, v, k=5)
        rep_all += len({copy_key(h.row) for h in a}) < len(a)
        rep_def += len({copy_key(h.row) for h in d}) < len(d)
    print(f"top-5 lists holding one content twice: all_copies {rep_all}/{len(qs)}, default {rep_def}/{len(qs)}")


if __name__ == "__main__":
    main()
