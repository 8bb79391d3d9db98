"""Concurrency: searches from several threads while an indexer process writes the same index.

The writer is a real ``build_index`` run in another process (new files, changed files, deleted files:
upserts, then a prune delete, then optimize) that logs every commit it makes. The readers share one
:class:`Index` handle, as the web UI does (half of them through the public ``search()`` query API,
half through the store), and record every result. Afterwards each result must be
*exactly* what brute force gives over one committed state (the initial one or the state after some
commit): same ids, same scores. A torn read, a half-applied commit, a stale row next to a new one or
a duplicate would match no state.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.retrieval.index import Index
from imgrag.retrieval.queries.search import search
from imgrag.retrieval.stores.base import Filters

from fakes import DIM, FakeEmbedder
from reliability import all_rows
from waiting import wait_until

TESTS = Path(__file__).resolve().parent
SEARCHES = 1000
THREADS = 4
K = 5
GLOB = "*/d1/*"

WRITER = r"""
import json, os, sys, time
import numpy as np
sys.path.insert(0, {tests!r})
from fakes import FakeEmbedder
from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.retrieval.index import Index

log = open({log!r}, "w")
idx = Index.open({root!r}, embedder=FakeEmbedder())
st = idx.store
orig_upsert, orig_delete = st.upsert, st.delete

def note(rec):
    log.write(json.dumps(rec) + "\n"); log.flush(); os.fsync(log.fileno())
    # pace the writer (a real model is slower than the fake one) so searches overlap several commits;
    # each result is checked against every committed state, so no interleaving can make a check pass wrongly
    time.sleep({pause})

def upsert(rows):
    orig_upsert(rows)
    note({{"op": "upsert", "ids": rows["id"].to_pylist(),
           "vectors": np.asarray(rows["vector"].to_pylist(), np.float32).tolist()}})

def delete(ids):
    ids = list(ids)
    orig_delete(ids)
    note({{"op": "delete", "ids": ids}})

st.upsert, st.delete = upsert, delete
note({{"op": "start"}})
rep = build_index(idx, [{coll!r}], IndexOptions(batch_size=6, workers=0, commit_every=6))
note({{"op": "done", "total": rep.total_items}})
"""


def paint(path: Path, rng: np.random.Generator) -> None:
    """A small image of a random colour and random noise level: well-spread fake-embedder vectors."""
    base = rng.uniform(0, 255, 3)
    amp = rng.uniform(0, 90)
    arr = np.clip(base + rng.uniform(-amp, amp, (10, 12, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def states_from(initial: dict[str, np.ndarray], log_path: Path) -> list[dict[str, np.ndarray]]:
    states = [dict(initial)]
    for line in log_path.read_text().splitlines():
        rec = json.loads(line)
        if rec["op"] == "upsert":
            s = dict(states[-1])
            for i, v in zip(rec["ids"], rec["vectors"]):
                s[i] = np.asarray(v, np.float32)
            states.append(s)
        elif rec["op"] == "delete":
            s = dict(states[-1])
            for i in rec["ids"]:
                s.pop(i, None)
            states.append(s)
    return states


class State:
    """One committed state, ready for brute-force checks."""

    def __init__(self, rows: dict[str, np.ndarray]) -> None:
        self.ids = list(rows)
        self.index = {i: n for n, i in enumerate(self.ids)}
        self.m = np.stack([rows[i] for i in self.ids]) if rows else np.zeros((0, DIM), np.float32)
        self.in_glob = np.array([fnmatch.fnmatchcase(i, GLOB) for i in self.ids], bool)

    def consistent(self, ids: list[str], scores: np.ndarray, q: np.ndarray, glob: str | None) -> bool:
        """Same top-k as brute force over this state (ties aside) with the same scores."""
        if any(i not in self.index for i in ids):
            return False
        s = self.m @ q
        cand = np.flatnonzero(self.in_glob) if glob else np.arange(len(self.ids))
        order = cand[np.argsort(-s[cand], kind="stable")[:K]]
        if len(ids) != len(order) or not np.allclose(scores, s[order], atol=1e-5):
            return False
        if not np.allclose([s[self.index[i]] for i in ids], scores, atol=1e-5):
            return False
        return all(a == self.ids[b] or abs(float(sa) - float(s[b])) < 1e-5 for a, b, sa in zip(ids, order, scores))


@pytest.mark.slow
@pytest.mark.parametrize("store", ["lancedb", "faiss"])
def test_searches_during_indexing_match_a_committed_state(store, tmp_path):
    rng = np.random.default_rng(11)
    coll = tmp_path / "coll"
    first = [coll / f"d{i % 5}" / f"a{i:04d}.png" for i in range(120)]
    for p in first:
        paint(p, rng)
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store=store)
    build_index(idx, [coll], IndexOptions(batch_size=16, workers=0, commit_every=64))
    initial = {k: np.asarray(r["vector"], np.float32) for k, r in all_rows(idx).items()}
    assert len(initial) == 120

    # the writer's work: 120 new files, 10 changed, 10 deleted
    for i in range(120):
        paint(coll / f"d{i % 5}" / f"b{i:04d}.png", rng)
    for p in first[:10]:
        paint(p, rng)
        os.utime(p, ns=(time.time_ns(), time.time_ns() + 5 * 10**9))
    for p in first[-10:]:
        p.unlink()

    reader = Index.open(tmp_path / "idx", embedder=FakeEmbedder())
    reader.store.count()  # open the store before the writer starts
    log_path = tmp_path / "commits.jsonl"
    code = WRITER.format(tests=str(TESTS), log=str(log_path), root=str(tmp_path / "idx"), coll=str(coll), pause=0.05)
    writer = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)

    # readers start once the writer has committed something; 1,000 searches in all
    wait_until(lambda: (log_path.exists() and log_path.read_text().count("\n") >= 2) or writer.poll() is not None,
               300, "the writer's first commit")
    results: list[list] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    counter = {"n": 0}
    lock = threading.Lock()

    def read(t: int) -> None:
        r = np.random.default_rng(100 + t)
        try:
            while True:
                with lock:
                    if counter["n"] >= SEARCHES:
                        return
                    counter["n"] += 1
                q = r.standard_normal(DIM).astype(np.float32)
                q /= np.linalg.norm(q)
                glob = GLOB if t % 2 else None
                f = Filters(path_glob=glob) if glob else None
                if t < 2:  # the store API
                    hits = reader.store.search(q[None], K, filters=f)[0]
                else:  # the public query API the CLI and UI use
                    hits = search(reader, q, K, filters=f)
                results[t].append((q, glob, [h.id for h in hits], np.asarray([h.score for h in hits], np.float32),
                                   [h.path for h in hits]))
                time.sleep(0.004)  # spread the 1,000 searches over the writer's run (pacing, not a wait)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=read, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    _, err = writer.communicate(timeout=300)
    for th in threads:
        th.join(300)
    assert writer.returncode == 0, err[-3000:]
    assert not errors, repr(errors[:3])

    states = states_from(initial, log_path)
    checks = [State(s) for s in states]
    recs = [json.loads(x) for x in log_path.read_text().splitlines()]
    assert recs[-1]["op"] == "done" and recs[-1]["total"] == 230
    assert len(states) >= 20  # 130 rows in commits of 6, then the prune delete
    final = states[-1]
    assert len(final) == 230 and set(final) == set(all_rows(Index.open(tmp_path / "idx", embedder=FakeEmbedder())))

    total, seen_states = 0, set()
    for t in range(THREADS):
        for q, glob, ids, scores, paths in results[t]:
            total += 1
            assert ids == paths
            assert len(set(ids)) == len(ids), f"duplicate hit {ids}"
            ok = [j for j, s in enumerate(checks) if s.consistent(ids, scores, q, glob)]
            assert ok, f"thread {t}: result {list(zip(ids, scores.round(5)))} matches no committed state"
            seen_states.add(ok[0] if len(ok) == 1 else (ok[0], ok[-1]))
    assert total == SEARCHES
    # the searches really overlapped the writes: they saw several different states
    distinct = {s if isinstance(s, int) else s[0] for s in seen_states}
    assert len(distinct) >= 3, distinct
    print(f"\n{store}: {total} searches from {THREADS} threads, {len(states) - 1} commits, "
          f"results matched {len(distinct)} distinct committed states, 0 errors")


def test_state_checker_rejects_torn_results():
    """The checker above has teeth: a result mixing two states, a stale score or a phantom row fails."""
    rng = np.random.default_rng(3)

    def unit(n):
        v = rng.standard_normal((n, DIM)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    ids = [f"/c/d{i % 3}/x{i}.png" for i in range(40)]
    a = dict(zip(ids, unit(40)))
    b = dict(a)
    for i in ids[:20]:  # a commit replacing half the vectors
        b[i] = unit(1)[0]
    sa, sb = State(a), State(b)
    q = unit(1)[0]
    top_a = sorted(ids, key=lambda i: -float(a[i] @ q))[:K]
    scores_a = np.array([a[i] @ q for i in top_a], np.float32)
    assert sa.consistent(top_a, scores_a, q, None)
    top_b = sorted(ids, key=lambda i: -float(b[i] @ q))[:K]
    assert top_a != top_b and not sb.consistent(top_a, scores_a, q, None)
    # ids of state a with one score read from state b's vector (a torn read)
    changed = next(i for i in top_a if i in ids[:20]) if any(i in ids[:20] for i in top_a) else top_a[0]
    torn = scores_a.copy()
    torn[top_a.index(changed)] = float(b[changed] @ q) if changed in ids[:20] else torn[0] + 0.01
    assert not sa.consistent(top_a, torn, q, None) and not sb.consistent(top_a, torn, q, None)
    # a phantom id, a duplicate, a missing hit
    assert not sa.consistent(top_a[:-1] + ["/c/ghost.png"], scores_a, q, None)
    assert not sa.consistent(top_a[:-1] + [top_a[0]], scores_a, q, None)
    assert not sa.consistent(top_a[:-1], scores_a[:-1], q, None)
    # filtered: only rows under d1 may appear
    top_f = sorted([i for i in ids if "/d1/" in i], key=lambda i: -float(a[i] @ q))[:K]
    assert sa.consistent(top_f, np.array([a[i] @ q for i in top_f], np.float32), q, GLOB)
    assert not sa.consistent(top_a, scores_a, q, GLOB)
