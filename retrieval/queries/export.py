"""Export an index to one Parquet file: paths, metadata, labels and vectors, for pandas, DuckDB, FAISS or FiftyOne.

Rows are streamed through the store's scan in batches, so memory stays bounded whatever the index size; the
file is written to a temp name and renamed into place (``atomic_open``), so a reader never sees half a file.

Columns: the row schema (:data:`~imgrag.retrieval.stores.base.META_FIELDS`: ``id, path, page, size, mtime_ns,
hash, width, height, taken_at, gps_lat, gps_lon, text, label, label_score, indexed_at``) and ``vector`` as a
fixed-size list of float32 (L2-normalised; ``np.stack(df.vector)`` or ``pyarrow`` ``flatten().reshape``
gives the matrix to add to a FAISS ``IndexFlatIP``). The file's schema metadata names the model
(``imgrag.model``, ``imgrag.dim``, ``imgrag.fingerprint``) so vectors are not mixed with another model's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imgrag.retrieval.errors import ImgragError

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.retrieval.index import Index


@dataclass
class ExportReport:
    path: str
    rows: int
    bytes: int
    vectors: bool

    def to_dict(self) -> dict:
        return {"path": self.path, "rows": self.rows, "bytes": self.bytes, "vectors": self.vectors}


def export_parquet(index: "Index", out: str | Path, batch_size: int = 8192, vectors: bool = True,
                   compression: str = "zstd") -> ExportReport:
    """Write every row of ``index`` to the Parquet file ``out`` (replaced atomically); see the module doc."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imgrag.retrieval.atomic import atomic_open
    from imgrag.retrieval.stores.base import META_COLUMNS, row_schema

    out = Path(out).expanduser()
    if out.is_dir():
        raise ImgragError(f"{out} is a folder; give a file name such as {out / 'index.parquet'}")
    if not out.parent.is_dir():
        raise ImgragError(f"folder {out.parent} does not exist; create it or choose another output path")
    m = index.manifest
    schema = row_schema(m.dim)
    if not vectors:
        schema = schema.remove(schema.get_field_index("vector"))
    schema = schema.with_metadata({"imgrag.model": m.model, "imgrag.dim": str(m.dim),
                                   "imgrag.fingerprint": json.dumps(m.fingerprint, sort_keys=True),
                                   "imgrag.store": m.store})
    columns = [*META_COLUMNS, *(["vector"] if vectors else [])]
    rows = 0
    try:
        with atomic_open(out) as f:
            with pq.ParquetWriter(f, schema, compression=compression) as w:
                for b in index.store.scan(columns=columns, batch_size=batch_size):
                    t = pa.Table.from_batches([b]).select(columns)
                    w.write_table(t.cast(schema))
                    rows += t.num_rows
    except OSError as e:
        raise ImgragError(f"cannot write {out}: {e.strerror or e}") from e
    return ExportReport(path=str(out), rows=rows, bytes=out.stat().st_size, vectors=vectors)
