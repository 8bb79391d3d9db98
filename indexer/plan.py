"""One planner for both engines: what an indexing run has to do, from the listing and the index's rows.

The rules (the local engine and the Ray engine apply exactly these):

- **unchanged**: an image whose row (id = its path) has the listed size and mtime; a document (PDF) whose
  page rows all carry its listed size and mtime — unless ``retry_skipped`` and one of its pages was
  skipped. An unchanged document keeps its page skips.
- **failed before**: a file with a skip record of the same size and mtime is not retried (the record is
  carried over) unless ``retry_skipped``.
- **new / changed**: everything else. ``replace`` marks images that already have a row.
- **gone**: rows under the roots whose file was not listed (only when ``prune``). The engines delete them
  after embedding, so a **renamed** file can still reuse the vector stored under its old name: the new
  name is read (its content hash is only known then) and matched against :func:`reuse_sources`.
- Skip records outside the roots are kept as they are.

The index's rows and the listing are held as Arrow columns and compared with a join, so planning a
100M-file listing costs tens of bytes per file, not Python objects (``bench/ray_storage_size.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from imgrag.indexer.scan import FileEntry, Skip, is_under

_CHUNK = 65_536  # listed files per Arrow chunk


@dataclass
class Plan:
    """What one run must do. Every list is in listing order."""

    images: Any  # pyarrow.Table: path, size, mtime_ns, replace (the id has a row with another size/mtime)
    documents: list[FileEntry]  # new or changed documents (PDF); their pages are planned by indexer.documents
    skips: list[dict]  # skip records of this run: unusable listings, earlier failures not retried, page skips
    kept_skips: list[dict]  # earlier skip records outside the roots (untouched by this run)
    gone: list[str]  # ids of rows whose files disappeared under the roots
    known_ids: Any  # pyarrow.Array of every id in the index when planning
    doc_rows: dict[str, list[str]] = field(default_factory=dict)  # document path → its page row ids
    scanned: int = 0
    unchanged: int = 0

    @property
    def new_or_changed(self) -> int:
        return self.images.num_rows + len(self.documents)

    def image_entries(self) -> list[FileEntry]:
        cols = (self.images[c].to_pylist() for c in ("path", "size", "mtime_ns"))
        return [FileEntry(p, s, m) for p, s, m in zip(*cols)]

    def indexed(self, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` that had a row when planning (a file that fails now must lose its stale row)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        ids = list(ids)
        if not ids or not len(self.known_ids):
            return []
        mask = pc.is_in(pa.array(ids, pa.string()), value_set=self.known_ids).to_pylist()
        return [i for i, k in zip(ids, mask) if k]


def make_plan(states, items: Iterable[FileEntry | Skip], roots: Sequence[str],
              prev_skips: Iterable[dict] | Mapping[str, dict], retry_skipped: bool = False,
              prune: bool = True) -> Plan:
    """Plan a run. ``states`` is the store's ``file_states()`` table (id, path, size, mtime_ns[, hash]);
    ``items`` the listing (a generator is fine); ``prev_skips`` the index's skip records."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from imgrag.retrieval.pdf import is_pdf

    prev = dict(prev_skips) if isinstance(prev_skips, Mapping) else {r["path"]: r for r in prev_skips}
    kept = [r for p, r in prev.items() if not is_under(p, roots)]
    page_skips: dict[str, list[dict]] = {}
    for p, r in prev.items():
        if "#page=" in p:
            page_skips.setdefault(p.rsplit("#page=", 1)[0], []).append(r)
    states = _state_columns(states)
    known_ids = states["id"].combine_chunks()
    doc_rows, doc_states = _document_rows(states)

    skips: list[tuple[int, dict]] = []  # (listing position, record): sorted into listing order at the end
    documents: list[FileEntry] = []
    other_seen: list[str] = []  # listed paths that are not candidate images (pruning must keep their rows)
    chunks: list = []
    cand_schema = _cand_schema()
    cols: dict[str, list] = {"path": [], "size": [], "mtime_ns": [], "pos": []}
    scanned = unchanged = 0

    def flush() -> None:
        if cols["path"]:
            chunks.append(pa.table({c: pa.array(v, cand_schema.field(c).type) for c, v in cols.items()},
                                   schema=cand_schema))
            for v in cols.values():
                v.clear()
    for pos, item in enumerate(items):
        scanned += 1
        if isinstance(item, Skip):
            skips.append((pos, item.to_dict()))
            other_seen.append(item.path)
            continue
        if is_pdf(item.path):
            other_seen.append(item.path)
            if doc_states.get(item.path) == {(item.size, item.mtime_ns)} and not (
                    retry_skipped and item.path in page_skips):
                unchanged += 1  # every page row carries the current size and mtime: complete, unchanged
                skips.extend((pos, r) for r in page_skips.get(item.path, []))
            elif not retry_skipped and _same_file(prev.get(item.path), item.size, item.mtime_ns):
                skips.append((pos, prev[item.path]))  # unchanged since it failed: don't retry
            else:
                documents.append(item)
            continue
        for c, v in zip(("path", "size", "mtime_ns", "pos"), (item.path, item.size, item.mtime_ns, pos)):
            cols[c].append(v)
        if len(cols["path"]) >= _CHUNK:
            flush()
    flush()
    cand = pa.concat_tables(chunks) if chunks else cand_schema.empty_table()
    del chunks

    old = states.select(["id", "size", "mtime_ns"]).rename_columns(["path", "old_size", "old_mtime_ns"])
    if cand.num_rows:
        joined = cand.join(old, keys="path", join_type="left outer")
    else:
        joined = cand.append_column("old_size", pa.nulls(0, pa.int64())).append_column(
            "old_mtime_ns", pa.nulls(0, pa.int64()))
    same = pc.fill_null(pc.and_(pc.equal(joined["size"], joined["old_size"]),
                                pc.equal(joined["mtime_ns"], joined["old_mtime_ns"])), False)
    unchanged += int(pc.sum(same).as_py() or 0)
    todo = joined.filter(pc.invert(same))
    if prev and not retry_skipped and todo.num_rows:  # failed before and unchanged since: don't retry
        failed = pc.is_in(todo["path"], value_set=pa.array(list(prev), pa.string()))
        rows = todo.filter(failed).select(["path", "size", "mtime_ns", "pos"]).to_pylist()
        dropped = set()
        for r in rows:
            if _same_file(prev[r["path"]], r["size"], r["mtime_ns"]):
                skips.append((r["pos"], prev[r["path"]]))
                dropped.add(r["pos"])
        if dropped:
            todo = todo.filter(pc.invert(pc.is_in(todo["pos"], value_set=pa.array(sorted(dropped), pa.int64()))))
    todo = todo.sort_by("pos")  # the join does not keep the listing order
    images = pa.table({"path": todo["path"], "size": todo["size"], "mtime_ns": todo["mtime_ns"],
                       "replace": pc.is_valid(todo["old_size"])})
    gone = _gone(states, known_ids, cand["path"], other_seen, roots) if prune else []
    skips.sort(key=lambda t: t[0])
    return Plan(images=images, documents=documents, skips=[r for _, r in skips], kept_skips=kept, gone=gone,
                known_ids=known_ids, doc_rows=doc_rows, scanned=scanned, unchanged=unchanged)


def reuse_sources(states) -> dict[str, str]:
    """Reuse key (content hash, ``"<hash>#page=<n>"`` for a document page) → an id holding that vector.

    A new name whose bytes hash to a key here (a renamed, copied or touched file) takes the stored vector
    instead of being embedded again."""
    out: dict[str, str] = {}
    if "hash" not in states.column_names:
        return out
    for i, p, h in zip(*(states[c].to_pylist() for c in ("id", "path", "hash"))):
        if h:
            out.setdefault(h if i == p else f"{h}#page={i[len(p) + 6:]}", i)
    return out


# ------------------------------------------------------------------------------------------------
def _schema(*names_types: tuple[str, str]):
    import pyarrow as pa

    return pa.schema([(n, getattr(pa, t)()) for n, t in names_types])


def _cand_schema():
    return _schema(("path", "string"), ("size", "int64"), ("mtime_ns", "int64"), ("pos", "int64"))


def _state_columns(states):
    import pyarrow as pa

    cols = ["id", "path", "size", "mtime_ns"]
    schema = _schema(("id", "string"), ("path", "string"), ("size", "int64"), ("mtime_ns", "int64"))
    if states is None or states.num_rows == 0:
        return schema.empty_table()
    return pa.Table.from_arrays([states[c].cast(schema.field(c).type) for c in cols], schema=schema)


def _document_rows(states) -> tuple[dict[str, list[str]], dict[str, set]]:
    """Page rows (id ≠ path) by document: their ids, and the set of (size, mtime) they carry."""
    import pyarrow.compute as pc

    rows: dict[str, list[str]] = {}
    marks: dict[str, set] = {}
    if not states.num_rows:
        return rows, marks
    pages = states.filter(pc.not_equal(states["id"], states["path"]))
    for i, p, s, m in zip(*(pages[c].to_pylist() for c in ("id", "path", "size", "mtime_ns"))):
        rows.setdefault(p, []).append(i)
        marks.setdefault(p, set()).add((s, m))
    return rows, marks


def _same_file(record: dict | None, size: int, mtime_ns: int) -> bool:
    return record is not None and (record.get("size"), record.get("mtime_ns")) == (size, mtime_ns)


def _gone(states, known_ids, cand_paths, other_seen: list[str], roots: Sequence[str]) -> list[str]:
    import pyarrow as pa
    import pyarrow.compute as pc

    if not states.num_rows:
        return []
    paths = states["path"].combine_chunks()
    under = None
    for r in roots:  # vectorised scan.is_under
        m = pc.or_(pc.equal(paths, r), pc.starts_with(paths, r.rstrip("/") + "/"))
        under = m if under is None else pc.or_(under, m)
    if under is None:
        return []
    seen = pa.concat_arrays([cand_paths.combine_chunks().cast(pa.string()), pa.array(other_seen, pa.string())])
    return known_ids.filter(pc.and_(under, pc.invert(pc.is_in(paths, value_set=seen)))).to_pylist()
