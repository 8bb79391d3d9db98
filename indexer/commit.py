"""Committing a run's results: the skip list both engines keep, and the local engine's pending rows.

Crash safety and resume come from one rule: the store is the only record of what is done, and every
commit is atomic (``store.upsert``). A rerun skips files whose size and mtime match a committed row, so it
continues where a crash, Ctrl-C or SIGKILL stopped it — no duplicates, no gaps.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import numpy as np

from imgrag.indexer.documents import DocTracker, reuse_key
from imgrag.indexer.plan import Plan
from imgrag.retrieval.stores.base import META_COLUMNS, VectorStore, make_rows


class SkipLog:
    """The index's skip records: those outside this run's roots, kept as they were, plus this run's."""

    def __init__(self, index, plan: Plan) -> None:
        self.index = index
        self.kept = plan.kept_skips
        self.run: list[dict] = list(plan.skips)

    def extend(self, records: list[dict]) -> None:
        self.run.extend(records)

    def count(self) -> int:
        return sum(1 for s in self.run if s.get("path"))

    def save(self) -> None:
        self.index.write_skipped(self.kept + self.run)


class LocalCommitter:
    """Rows waiting for the next atomic commit of the local engine.

    A document goes in whole: pages of a document still being read wait for a later commit, and the
    pages a re-indexed document no longer has are deleted once all of its new pages are in.
    """

    def __init__(self, store: VectorStore, plan: Plan, docs: DocTracker, hash_to_id: dict[str, str],
                 skips: SkipLog, secs: dict[str, float]) -> None:
        self.store, self.plan, self.docs, self.hash_to_id = store, plan, docs, hash_to_id
        self.skips, self.secs = skips, secs
        self.metas: list[dict] = []
        self.vecs: list[np.ndarray] = []
        self.reuse: list[dict] = []  # metas whose vector comes from another row with the same hash
        self.errors: list[dict] = []
        self.cleaned_docs: set[str] = set()

    def add(self, meta: dict, vec: np.ndarray) -> None:
        self.metas.append(meta)
        self.vecs.append(vec)
        key = reuse_key(meta)
        if key:  # later copies in this run reuse this vector (pipeline._mark_reused)
            self.hash_to_id.setdefault(key, meta["id"])

    @property
    def pending(self) -> int:
        return len(self.metas) + len(self.reuse)

    def commit(self) -> None:
        if not (self.metas or self.reuse or self.errors):
            return
        tw = time.perf_counter()
        docs = self.docs
        held = lambda m: docs.is_doc(m["path"]) and not docs.complete(m["path"])  # noqa: E731
        keep = [j for j, m in enumerate(self.metas) if not held(m)]
        metas = [self.metas[j] for j in keep]
        vecs = [self.vecs[j] for j in keep]
        reuse = [m for m in self.reuse if not held(m)]
        later = ([m for m in self.metas if held(m)], [v for m, v in zip(self.metas, self.vecs) if held(m)],
                 [m for m in self.reuse if held(m)])
        if reuse:
            self._reused_rows(reuse, metas, vecs)
        if metas:
            now = datetime.now()
            for m in metas:
                m.setdefault("indexed_at", now)
            self.store.upsert(make_rows(metas, np.concatenate(vecs, axis=0)))
        failed_known = self.plan.indexed([e["path"] for e in self.errors])
        for path in list(docs.remaining):  # pages a re-indexed document no longer has
            if path not in self.cleaned_docs and docs.complete(path):
                self.cleaned_docs.add(path)
                failed_known += [i for i in docs.old_ids.get(path, [])
                                 if int(i.rsplit("#page=", 1)[1]) > docs.pages[path]]
        if failed_known:  # a file that was indexed and is now unreadable: drop its stale row
            self.store.delete(failed_known)
        self.skips.extend(self.errors)
        self.errors = []
        self.skips.save()
        self.secs["write"] += time.perf_counter() - tw
        self.metas, self.vecs, self.reuse = later

    def _reused_rows(self, reuse: list[dict], metas: list[dict], vecs: list[np.ndarray]) -> None:
        """Rows for renamed/duplicated/touched files: the source row's vector and labels, the new file's keys.

        The source is a row still pending in this committer (content first embedded in this run, possibly
        held with an unfinished document) or else the store's row.
        """
        src_ids = {m["id"]: self.hash_to_id.get(reuse_key(m)) for m in reuse}
        pending = {pm["id"]: (pm, v) for pm, v in zip(self.metas, self.vecs)}
        by_id: dict[str, dict[str, Any]] = {}
        for i in set(src_ids.values()) - {None}:
            if i in pending:
                pm, v = pending[i]
                by_id[i] = {**{c: pm.get(c) for c in META_COLUMNS if c != "indexed_at"}, "vector": v[0]}
        stored = [i for i in set(src_ids.values()) - {None} if i not in by_id]
        if stored:
            by_id.update({r["id"]: r for r in self.store.get(stored).to_pylist()})
        for m in reuse:
            s: dict[str, Any] | None = by_id.get(src_ids[m["id"]])  # type: ignore[arg-type]
            if s is None:  # source row vanished (pruned in this run) or failed: cannot reuse; rare
                self.errors.append(_skip(m, "content matched a deleted item; will be re-embedded next run"))
                continue
            full = {c: s.get(c) for c in META_COLUMNS if c in s}
            full.update({k: m[k] for k in ("id", "path", "size", "mtime_ns", "hash")})
            full["label"], full["label_score"] = s.get("label"), s.get("label_score")
            metas.append(full)
            vecs.append(np.asarray(s["vector"], dtype=np.float32)[None, :])


def _skip(meta: dict, reason: str) -> dict:
    return {"path": meta["path"], "reason": reason, "size": meta.get("size"), "mtime_ns": meta.get("mtime_ns")}
