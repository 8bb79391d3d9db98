"""imgrag export: every row, its metadata, labels and vectors round-trip through Parquet (pyarrow and pandas)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.index import Index
from imgrag.retrieval.queries.export import export_parquet
from imgrag.retrieval.stores import make_rows

from fakes import DIM, FakeEmbedder


@pytest.fixture(params=["lancedb", "faiss"])
def index(tmp_path, request):
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store=request.param)
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((25, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    meta = [{"id": f"/p/{i:02d}.jpg", "path": f"/p/{i:02d}.jpg", "size": 1000 + i, "width": 40 + i, "height": 30,
             "hash": f"h{i}", "mtime_ns": i, "taken_at": datetime(2020, 1, 1 + i) if i % 2 else None,
             "label": "cat" if i % 3 == 0 else None, "label_score": 0.5 if i % 3 == 0 else None} for i in range(25)]
    idx.store.upsert(make_rows(meta, vecs))
    return idx, meta, vecs


def test_export_round_trips_through_pyarrow_and_pandas(index, tmp_path):
    idx, meta, vecs = index
    out = tmp_path / "out.parquet"
    rep = export_parquet(idx, out, batch_size=7)  # several batches
    assert rep.rows == 25 and rep.bytes == out.stat().st_size
    t = pq.read_table(out).sort_by("id")
    assert t.num_rows == 25
    assert t.schema.field("vector").type == pa.list_(pa.float32(), DIM)  # fixed-size list
    got = np.asarray(t["vector"].combine_chunks().flatten(), dtype=np.float32).reshape(-1, DIM)
    assert np.array_equal(got, vecs)
    assert t["path"].to_pylist() == [m["path"] for m in meta]
    assert t["label"].to_pylist() == [m["label"] for m in meta]
    assert t["taken_at"].to_pylist() == [m["taken_at"] for m in meta]
    assert t["size"].to_pylist() == [m["size"] for m in meta]
    md = pq.read_schema(out).metadata
    assert md[b"imgrag.model"] == b"fake-rgb" and md[b"imgrag.dim"] == str(DIM).encode()
    df = pd_read(out)
    assert list(df.sort_values("id")["width"]) == [m["width"] for m in meta]
    assert np.allclose(np.stack(df.sort_values("id")["vector"].to_numpy()), vecs)


def pd_read(path):
    import pandas as pd

    return pd.read_parquet(path)


def test_export_without_vectors_and_bad_targets(index, tmp_path):
    idx, meta, _ = index
    out = tmp_path / "meta.parquet"
    export_parquet(idx, out, vectors=False)
    t = pq.read_table(out)
    assert "vector" not in t.column_names and t.num_rows == len(meta)
    with pytest.raises(ImgragError, match="folder"):
        export_parquet(idx, tmp_path)
    with pytest.raises(ImgragError, match="does not exist"):
        export_parquet(idx, tmp_path / "missing" / "x.parquet")


def test_failed_export_leaves_old_file_untouched(index, tmp_path, monkeypatch):
    idx, _, _ = index
    out = tmp_path / "out.parquet"
    out.write_bytes(b"old")

    def boom(*a, **k):
        yield from ()
        raise RuntimeError("disk gone")
    monkeypatch.setattr(type(idx.store), "scan", boom)
    with pytest.raises(RuntimeError):
        export_parquet(idx, out)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
