"""The Ray engine plans with the shared planner, documents aside (they become skips); no Ray needed."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest

from imgrag.indexer.plan import make_plan
from imgrag.indexer.ray_engine import DOCUMENT_REASON, plan_work
from imgrag.indexer.scan import FileEntry, Skip

def states(rows):
    return pa.table({"id": [r[0] for r in rows], "path": [r[1] for r in rows],
                     "size": pa.array([r[2] for r in rows], pa.int64()),
                     "mtime_ns": pa.array([r[3] for r in rows], pa.int64()), "hash": [None] * len(rows)})


def test_plan_rules():
    st = states([("/r/a.jpg", "/r/a.jpg", 1, 10), ("/r/b.jpg", "/r/b.jpg", 2, 20), ("/r/gone.jpg", "/r/gone.jpg", 3, 30),
                 ("/other/x.jpg", "/other/x.jpg", 4, 40), ("/r/d.pdf#page=1", "/r/d.pdf", 5, 50),
                 ("/r/sub/c.jpg", "/r/sub/c.jpg", 6, 60), ("/rr/not-under.jpg", "/rr/not-under.jpg", 1, 1)])
    items = [FileEntry("/r/a.jpg", 1, 10),  # unchanged
             FileEntry("/r/b.jpg", 2, 21),  # touched: re-embed, replacing its row
             FileEntry("/r/new.png", 7, 70),  # new
             FileEntry("/r/bad.jpg", 8, 80),  # failed before, unchanged: not retried
             FileEntry("/r/bad2.jpg", 9, 90),  # failed before, changed since: retried
             Skip("/r/link.jpg", "broken symlink"),
             FileEntry("/r/d.pdf", 5, 50),  # a document the local engine indexed: kept
             FileEntry("/r/e.pdf", 5, 50),  # a new document: skipped with a reason
             FileEntry("/r/sub/c.jpg", 6, 60)]
    prev = {"/r/bad.jpg": {"path": "/r/bad.jpg", "reason": "truncated", "size": 8, "mtime_ns": 80},
            "/r/bad2.jpg": {"path": "/r/bad2.jpg", "reason": "truncated", "size": 9, "mtime_ns": 1}}
    p = plan_work(st, iter(items), ["/r"], prev)
    work = {r["path"]: r for r in p.images.to_pylist()}
    assert work == {"/r/b.jpg": {"path": "/r/b.jpg", "size": 2, "mtime_ns": 21, "replace": True},
                    "/r/bad2.jpg": {"path": "/r/bad2.jpg", "size": 9, "mtime_ns": 90, "replace": False},
                    "/r/new.png": {"path": "/r/new.png", "size": 7, "mtime_ns": 70, "replace": False}}
    skips = {s["path"]: s["reason"] for s in p.skips}
    assert set(skips) == {"/r/link.jpg", "/r/e.pdf", "/r/bad.jpg"}
    assert "local engine" in skips["/r/e.pdf"] and skips["/r/bad.jpg"] == "truncated"
    assert p.gone == ["/r/gone.jpg"]  # not /other/…, not /rr/… (a sibling prefix), not the indexed PDF's pages
    assert (p.scanned, p.unchanged) == (9, 3)

    retry = plan_work(st, iter(items), ["/r"], prev, retry_skipped=True, prune=False)
    assert "/r/bad.jpg" in retry.images["path"].to_pylist() and retry.gone == []


def test_plan_empty_index_and_empty_listing():
    empty = states([])
    p = plan_work(empty, iter([FileEntry("/r/a.jpg", 1, 1)]), ["/r"], {})
    assert p.images.to_pylist() == [{"path": "/r/a.jpg", "size": 1, "mtime_ns": 1, "replace": False}]
    p = plan_work(states([("/r/a.jpg", "/r/a.jpg", 1, 1)]), iter([]), ["/r"], {})
    assert p.images.num_rows == 0 and p.gone == ["/r/a.jpg"]


def test_document_skipped_by_ray_is_indexed_by_the_local_engine_later():
    """The Ray engine's skip of a new PDF carries no size/mtime, so the local planner does not take it for
    an earlier failure of the unchanged file: the document is planned, not skipped again."""
    items = [FileEntry("/r/e.pdf", 5, 50)]
    ray_plan = plan_work(states([]), iter(items), ["/r"], {})
    assert [(s["path"], s["reason"]) for s in ray_plan.skips] == [("/r/e.pdf", DOCUMENT_REASON)]
    local = make_plan(states([]), iter(items), ["/r"], ray_plan.skips)
    assert local.documents == items and local.skips == []


def test_staged_rows_are_invisible_until_one_commit(tmp_path):
    """The Ray engine's write path through the store: workers stage rows (a picklable writer), the driver
    commits the tokens of many workers as one new table version; stores that cannot stage say so."""
    pytest.importorskip("lance", reason="needs pylance: pip install 'imgrag[distributed]'")
    from imgrag.retrieval.errors import ImgragError
    from imgrag.retrieval.stores import open_store
    from imgrag.retrieval.stores.base import make_rows

    store = open_store("lancedb", tmp_path / "lancedb", 4)
    vecs = np.eye(4, dtype=np.float32)
    writer = pickle.loads(pickle.dumps(store.staged_writer()))  # as a Ray task receives it
    tokens = [writer(make_rows([{"id": f"/r/{i}.jpg", "path": f"/r/{i}.jpg", "size": i}], vecs[i:i + 1]))
              for i in range(3)]
    assert writer(make_rows([], np.zeros((0, 4), np.float32))) == "[]"
    version = store.describe()["version"]
    assert store.count() == 0  # staged, not committed
    store.commit_staged(tokens)
    assert store.count() == 3 and store.describe()["version"] == version + 1  # one atomic commit
    assert sorted(store.get(["/r/0.jpg", "/r/2.jpg"])["size"].to_pylist()) == [0, 2]
    store.commit_staged([])  # nothing to do: no new version
    assert store.describe()["version"] == version + 1

    faiss = open_store("faiss", tmp_path / "faiss", 4)
    with pytest.raises(ImgragError, match="cannot take rows written by worker processes"):
        faiss.staged_writer()
