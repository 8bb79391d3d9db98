"""The one planner both engines use (indexer/plan.py): each category, renames by content hash, earlier skips."""

from __future__ import annotations

import pyarrow as pa
import pytest

from imgrag.indexer import plan as plan_mod
from imgrag.indexer.plan import make_plan, reuse_sources
from imgrag.indexer.scan import FileEntry, Skip


def states(rows):
    """The store's file_states(): (id, path, size, mtime_ns, hash) per row."""
    return pa.table({"id": [r[0] for r in rows], "path": [r[1] for r in rows],
                     "size": pa.array([r[2] for r in rows], pa.int64()),
                     "mtime_ns": pa.array([r[3] for r in rows], pa.int64()),
                     "hash": pa.array([r[4] if len(r) > 4 else None for r in rows], pa.string())})


def img(path, size, mtime, h=None):
    return (path, path, size, mtime, h)


@pytest.fixture(params=[65_536, 2], ids=["one-chunk", "many-chunks"])
def chunk(request, monkeypatch):
    """Plans must not depend on how the listing is chunked into Arrow tables."""
    monkeypatch.setattr(plan_mod, "_CHUNK", request.param)
    return request.param


def test_each_category_in_listing_order(chunk):
    st = states([img("/r/same.jpg", 1, 10), img("/r/touched.jpg", 2, 20), img("/r/gone.jpg", 3, 30),
                 img("/elsewhere/x.jpg", 4, 40), img("/rr/sibling.jpg", 5, 50)])
    items = [FileEntry("/r/z-new.png", 7, 70), FileEntry("/r/touched.jpg", 2, 21),
             Skip("/r/link.jpg", "broken symlink"), FileEntry("/r/same.jpg", 1, 10), FileEntry("/r/a-new.jpg", 8, 80)]
    p = make_plan(st, iter(items), ["/r"], [])
    assert p.images.to_pylist() == [  # listing order, not path order
        {"path": "/r/z-new.png", "size": 7, "mtime_ns": 70, "replace": False},
        {"path": "/r/touched.jpg", "size": 2, "mtime_ns": 21, "replace": True},
        {"path": "/r/a-new.jpg", "size": 8, "mtime_ns": 80, "replace": False}]
    assert [e.path for e in p.image_entries()] == ["/r/z-new.png", "/r/touched.jpg", "/r/a-new.jpg"]
    assert p.skips == [{"path": "/r/link.jpg", "reason": "broken symlink", "size": None, "mtime_ns": None}]
    assert p.gone == ["/r/gone.jpg"]  # not outside the roots, not a sibling prefix (/rr)
    assert (p.scanned, p.unchanged, p.new_or_changed, p.documents) == (5, 1, 3, [])
    assert p.indexed(["/r/gone.jpg", "/r/z-new.png", "/elsewhere/x.jpg"]) == ["/r/gone.jpg", "/elsewhere/x.jpg"]
    assert make_plan(st, iter(items), ["/r"], [], prune=False).gone == []


def test_empty_index_and_empty_listing(chunk):
    p = make_plan(states([]), iter([FileEntry("/r/a.jpg", 1, 1)]), ["/r"], [])
    assert p.images.to_pylist() == [{"path": "/r/a.jpg", "size": 1, "mtime_ns": 1, "replace": False}]
    assert p.gone == [] and p.indexed(["/r/a.jpg"]) == []
    p = make_plan(states([img("/r/a.jpg", 1, 1)]), iter([]), ["/r"], [])
    assert p.images.num_rows == 0 and p.gone == ["/r/a.jpg"] and p.scanned == 0


def test_rename_is_new_plus_gone_and_the_old_vector_is_found_by_hash(chunk):
    """A renamed file is planned as new (its hash is only known once read) and its old row as gone; the
    engine deletes gone rows after embedding, and the old row is the reuse source for that hash."""
    st = states([img("/r/old.jpg", 5, 50, "h1"), ("/r/d.pdf#page=2", "/r/d.pdf", 9, 90, "hd"),
                 img("/r/nohash.jpg", 1, 1, None)])
    p = make_plan(st, iter([FileEntry("/r/renamed.jpg", 5, 99), FileEntry("/r/d.pdf", 9, 90),
                            FileEntry("/r/nohash.jpg", 1, 1)]), ["/r"], [])
    assert p.images["path"].to_pylist() == ["/r/renamed.jpg"] and p.gone == ["/r/old.jpg"]
    assert reuse_sources(st) == {"h1": "/r/old.jpg", "hd#page=2": "/r/d.pdf#page=2"}
    assert reuse_sources(st.drop_columns(["hash"])) == {}


def test_a_skipped_file_is_retried_only_when_it_changed(chunk):
    prev = [{"path": "/r/bad.jpg", "reason": "truncated", "size": 8, "mtime_ns": 80},
            {"path": "/r/fixed.jpg", "reason": "truncated", "size": 9, "mtime_ns": 1},
            {"path": "/r/broken.pdf", "reason": "encrypted", "size": 3, "mtime_ns": 30},
            {"path": "/other/old.jpg", "reason": "truncated", "size": 1, "mtime_ns": 1}]
    items = [FileEntry("/r/bad.jpg", 8, 80), FileEntry("/r/fixed.jpg", 9, 90), FileEntry("/r/broken.pdf", 3, 30)]
    p = make_plan(states([]), iter(items), ["/r"], prev)
    assert p.images["path"].to_pylist() == ["/r/fixed.jpg"]  # changed since it failed: retried
    assert p.skips == [prev[0], prev[2]]  # unchanged since they failed: carried over, in listing order
    assert p.documents == [] and p.kept_skips == [prev[3]]  # outside the roots: kept as it was
    assert p.unchanged == 0
    again = make_plan(states([]), iter(items), ["/r"], {r["path"]: r for r in prev}, retry_skipped=True)
    assert again.images["path"].to_pylist() == ["/r/bad.jpg", "/r/fixed.jpg"] and again.skips == []
    assert again.documents == [FileEntry("/r/broken.pdf", 3, 30)]


def test_documents_unchanged_changed_and_half_written(chunk):
    st = states([("/r/a.pdf#page=1", "/r/a.pdf", 5, 50), ("/r/a.pdf#page=2", "/r/a.pdf", 5, 50),
                 ("/r/b.pdf#page=1", "/r/b.pdf", 6, 60),
                 # a crash between a document's upsert and its page cleanup: pages carry two versions
                 ("/r/c.pdf#page=1", "/r/c.pdf", 7, 71), ("/r/c.pdf#page=2", "/r/c.pdf", 7, 70),
                 ("/r/gone.pdf#page=1", "/r/gone.pdf", 1, 1)])
    page_skip = {"path": "/r/a.pdf#page=3", "reason": "cannot render page", "size": 5, "mtime_ns": 50}
    items = [FileEntry("/r/a.pdf", 5, 50), FileEntry("/r/b.pdf", 6, 61), FileEntry("/r/c.pdf", 7, 71),
             FileEntry("/r/new.pdf", 2, 20)]
    p = make_plan(st, iter(items), ["/r"], [page_skip])
    assert p.unchanged == 1 and p.skips == [page_skip]  # the unchanged document keeps its page skip
    assert p.documents == items[1:] and p.images.num_rows == 0 and p.new_or_changed == 3
    assert p.doc_rows["/r/a.pdf"] == ["/r/a.pdf#page=1", "/r/a.pdf#page=2"]
    assert p.doc_rows["/r/c.pdf"] == ["/r/c.pdf#page=1", "/r/c.pdf#page=2"]
    assert p.gone == ["/r/gone.pdf#page=1"]  # a listed document's pages are never pruned
    retry = make_plan(st, iter(items), ["/r"], [page_skip], retry_skipped=True)
    assert retry.documents[0] == items[0] and retry.skips == []  # its skipped page is tried again
