"""The FAISS store's state in memory: the manifest's entries replayed in order, and the lock guarding it.

Replay rules: the last version of an ``id`` wins, a delete removes it. Each stored vector has a unique int64
label (never reused); a ``meta`` entry holds a new metadata version of the live row with the same label.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa

from imgrag.retrieval.stores.faiss.files import LABEL, META_LBL_SCHEMA, StoreFiles


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self):
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def positions(label_pos: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The row position of each label in ``label_pos`` (label -> position or -1); -1 where unknown."""
    p = np.full(len(labels), -1, dtype=np.int64)
    inside = (labels >= 0) & (labels < len(label_pos))
    p[inside] = label_pos[labels[inside]]
    return p


class State:
    """Everything a reader needs, swapped/mutated only under the write side of the RW lock."""

    def __init__(self, man: dict[str, Any], key: Any) -> None:
        self.man = man
        self.key = key  # stat of manifest.json this state reflects
        self.meta = META_LBL_SCHEMA.empty_table()  # row versions (META + _label)
        self.lab = np.zeros(0, dtype=np.int64)  # label of each position
        self.gen = np.zeros(0, dtype=np.int64)  # entry generation each position came from
        self.live = np.zeros(0, dtype=bool)
        self.pos: dict[str, int] = {}  # id -> live position
        self.label_pos = np.full(0, -1, dtype=np.int64)  # label -> live position or -1
        self.index = None  # faiss IndexIDMap2
        self.base = None  # the index inside the id map (downcast)
        self.fallback = False  # True: exact Flat stands in for a factory index not trained yet
        self.trained_rows = 0
        self.dead_in_index: set[int] = set()
        self.note: str | None = None
        self.gpu_index = None
        self.gpu_error: str | None = None
        self.torch_exact = None  # gpu.TorchExact: the vectors resident for torch search (search_device)
        self.torch_error: str | None = None

    @classmethod
    def replay(cls, files: StoreFiles, man: dict[str, Any], key: Any) -> "State":
        """The rows of every entry of ``man`` applied in order (no faiss index yet)."""
        st = cls(man, key)
        for e in man["entries"]:
            st.append(files.read_entry(e), e["gen"], e["kind"], track_index=False)
        st.shrink()
        return st

    def beside(self) -> "State":
        """A state sharing these rows, to build a new index in while readers keep using this one."""
        tmp = State(self.man, self.key)
        tmp.meta, tmp.lab, tmp.gen, tmp.live = self.meta, self.lab, self.gen, self.live
        tmp.pos, tmp.label_pos = self.pos, self.label_pos
        tmp.trained_rows = self.trained_rows
        return tmp

    @property
    def n(self) -> int:
        return len(self.pos)

    def positions(self, labels: np.ndarray) -> np.ndarray:
        """Live row position of each label, -1 for labels not live."""
        return positions(self.label_pos, labels)

    def ensure_labels(self, upto: int) -> None:
        if upto > len(self.label_pos):
            grow = np.full(max(upto, 2 * len(self.label_pos)) - len(self.label_pos), -1, dtype=np.int64)
            self.label_pos = np.concatenate([self.label_pos, grow])

    def append(self, tbl: pa.Table, gen: int, kind: str, track_index: bool) -> np.ndarray:
        """Apply one entry's rows (kind rows/meta) or ids (kind del); returns labels newly live with vectors."""
        base = self.meta.num_rows
        if kind == "del":
            for i in tbl["id"].to_pylist():
                old = self.pos.pop(i, None)
                if old is None:
                    continue
                self.live[old] = False
                lab = int(self.lab[old])
                self.label_pos[lab] = -1
                if track_index:
                    self.dead_in_index.add(lab)
            return np.zeros(0, dtype=np.int64)
        n = tbl.num_rows
        ids = tbl["id"].to_pylist()
        labels = np.asarray(tbl[LABEL].to_numpy(zero_copy_only=False), dtype=np.int64)
        if n:
            self.ensure_labels(int(labels.max()) + 1)
        newlive = np.ones(n, dtype=bool)
        for j, (i, lab) in enumerate(zip(ids, labels.tolist())):
            old = self.pos.get(i)
            if kind == "meta":  # a new metadata version of the live row with this label
                if old is None or int(self.lab[old]) != lab:
                    newlive[j] = False
                    continue
                self.live[old] = False
            elif old is not None:  # a new vector replaces the old one
                self.live[old] = False
                ol = int(self.lab[old])
                if self.label_pos[ol] == old:
                    self.label_pos[ol] = -1
                    if track_index:
                        self.dead_in_index.add(ol)
            self.pos[i] = base + j
            self.label_pos[lab] = base + j
        self.meta = pa.concat_tables([self.meta, tbl.select(META_LBL_SCHEMA.names).cast(META_LBL_SCHEMA)])
        if self.meta.num_rows > 64 and len(self.meta.column(0).chunks) > 64:
            self.meta = self.meta.combine_chunks()
        self.lab = np.concatenate([self.lab, labels])
        self.gen = np.concatenate([self.gen, np.full(n, gen, dtype=np.int64)])
        self.live = np.concatenate([self.live, newlive])
        return labels[newlive] if kind == "rows" else np.zeros(0, dtype=np.int64)

    def shrink(self) -> None:
        """Drop dead row versions from memory (positions change)."""
        keep = np.flatnonzero(self.live)
        if len(keep) == len(self.live):
            return
        self.meta = self.meta.take(pa.array(keep, pa.int64())).combine_chunks()
        self.lab, self.gen = self.lab[keep], self.gen[keep]
        self.live = np.ones(len(keep), dtype=bool)
        ids = self.meta["id"].to_pylist()
        self.pos = {i: p for p, i in enumerate(ids)}
        self.label_pos[:] = -1
        if len(keep):
            self.label_pos[self.lab] = np.arange(len(keep), dtype=np.int64)

    def live_labels(self) -> np.ndarray:
        return self.lab[self.live]

    def rows_at(self, positions: np.ndarray) -> pa.Table:
        """Metadata rows (without the label) at ``positions``."""
        return self.meta.take(pa.array(positions, pa.int64())).drop_columns([LABEL])
