"""The FAISS store's index: factory rules, building and training, search parameters and the search paths.

The faiss index is an ``IndexIDMap2`` over row labels, built from any factory string with inner product.
Indexes that need training search exactly (Flat) until enough rows exist (39 per IVF list / PQ centroid).
The saved index records the labels it covers (``next_label``); rows committed after it are added on open,
and labels it holds that are no longer live are filtered out of every search.

Search paths: the plain index search (on every GPU when faiss-gpu sees them), a search with an id selector
for filters and exclusions, an exact search over the allowed rows when few match or the index cannot
take a selector, and — when the store searches with torch (:mod:`.gpu`: ``search_device``, on CUDA by
default when faiss has no GPU support) — one exact torch search for all of them.
"""

from __future__ import annotations

import re
import threading

import numpy as np

from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.stores.faiss import gpu as gpu_search
from imgrag.retrieval.stores.faiss.files import StoreFiles
from imgrag.retrieval.stores.faiss.state import State

_BRUTE_CHUNK = 32768


def factory_min_rows(factory: str, dim: int) -> int:
    """Rows needed to train ``factory`` well (0 = needs no training)."""
    import faiss

    idx = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if idx.is_trained:
        return 0
    need = 1
    m = re.search(r"IVF(\d+)", factory)
    if m:
        need = max(need, 39 * int(m.group(1)))  # faiss warns below 39 points per centroid
    for pm in re.finditer(r"PQ(\d+)(?:x(\d+))?", factory):
        nbits = int(pm.group(2)) if pm.group(2) else 8
        need = max(need, 39 * (1 << nbits))
    if need == 1 and re.search(r"(RQ|LSQ|PRQ|PLSQ|ITQ|OPQ)", factory):
        need = 39 * 256
    return need


def faiss_labels(idx) -> np.ndarray:
    """The labels an ``IndexIDMap2`` holds."""
    import faiss

    return faiss.vector_to_array(faiss.downcast_index(idx).id_map).astype(np.int64, copy=False)


def base_of(idx):
    """The index inside an id map, downcast to its own type."""
    import faiss

    return faiss.downcast_index(faiss.downcast_index(idx).index)


def exact_storage(base) -> bool:
    """True when reconstructing a vector from the index returns it exactly (Flat storage)."""
    import faiss

    if isinstance(base, faiss.IndexFlat):
        return True
    if isinstance(base, faiss.IndexHNSW):
        return isinstance(faiss.downcast_index(base.storage), faiss.IndexFlat)
    return False


class Ann:
    """One store's index settings, and the operations on the index of a :class:`State`."""

    def __init__(self, files: StoreFiles, factory: str, *, nprobe: int | None, ef_search: int,
                 exact_filter_rows: int, gpu: bool | None, train_min_rows: int | None,
                 search_device: str | None = "auto", search_precision: str = "fp32") -> None:
        self.files = files
        self.dim = files.dim
        factory = str(factory).strip()
        if not factory or "IDMap" in factory:
            raise ImgragError(f"faiss factory {factory!r} is not usable; give the index part only, e.g. Flat, HNSW32, "
                              "IVF4096,SQ8 (the store adds the id map itself)")
        try:
            self.min_train = factory_min_rows(factory, self.dim) if train_min_rows is None else max(1, int(train_min_rows))
        except RuntimeError as e:
            raise ImgragError(f"faiss cannot build index {factory!r} for {self.dim}-d vectors "
                              f"({str(e).splitlines()[-1][:160]}); see docs/stores.md for factory strings") from e
        self.factory = factory
        m = re.search(r"IVF(\d+)", factory)
        self.nlist = int(m.group(1)) if m else 0
        # 16 lists met recall@10 >= 0.95 with p50 <= 1.1 ms at both 100k (IVF256,SQ8: 0.962) and 1M vectors
        # (IVF1024,SQ8: 0.966, where the old nlist/16 = 64 took 3.7 ms for 0.971); BENCHMARKS.md
        self.nprobe = int(nprobe) if nprobe else (min(self.nlist, max(16, self.nlist // 64)) if self.nlist else 0)
        self.ef_search = max(1, int(ef_search))
        self.exact_filter_rows = int(exact_filter_rows)
        self.gpu = gpu
        self.search_device = gpu_search.check_mode(search_device)
        if search_precision not in ("fp32", "fp16"):
            raise ImgragError(f"search_precision must be fp32 or fp16, got {search_precision!r}")
        self.search_precision = search_precision
        gpu_search.resolve_mode(search_device, gpu)  # a bad $IMGRAG_SEARCH_DEVICE fails on open
        self._gpu_lock = threading.Lock()
        self._gpu_res = None
        self._faiss_gpus: int | None = None

    # --- building ------------------------------------------------------------------------------
    def attach(self, st: State) -> None:
        """Give a freshly replayed state its index: the saved one brought up to date, else one built now."""
        man = st.man
        live = np.sort(st.live_labels())
        ie = man.get("index")
        idx = None
        covered = 0
        if ie and ie.get("factory") == self.factory:
            idx = self.files.read_index(ie)
            covered = int(ie.get("next_label", 0))
            need = live[live < covered]
            if not np.isin(need, faiss_labels(idx)).all():  # index does not match the rows: rebuild it from them
                st.note = "saved index did not match the rows; rebuilt in memory (run optimize to save)"
                idx = None
        if idx is None:
            self.build(st, train=False)
        else:
            st.index = idx
            st.fallback = bool(ie.get("fallback"))
            st.trained_rows = int(ie.get("trained_rows", 0))
            tail = live[live >= covered]
            if len(tail):
                for lab, v in self.files.iter_vectors(man, min_label=covered):
                    sel = np.isin(lab, tail)
                    if sel.any():
                        idx.add_with_ids(np.ascontiguousarray(v[sel]), lab[sel])
            self.setup(st)
        have = faiss_labels(st.index)
        st.dead_in_index = set(have[st.positions(have) < 0].tolist())

    def setup(self, st: State) -> None:
        """Search-time settings + IVF direct map (so vectors can be reconstructed by label)."""
        import faiss

        st.base = base_of(st.index)
        if isinstance(st.base, faiss.IndexIVF):
            if self.nprobe:
                st.base.nprobe = min(self.nprobe, st.base.nlist)
            if st.base.direct_map.type == 0:  # NoMap
                try:
                    st.base.make_direct_map(True)
                except RuntimeError:  # pragma: no cover - exotic IVF variants
                    pass
        if isinstance(st.base, faiss.IndexHNSW):
            st.base.hnsw.efSearch = self.ef_search
        st.gpu_index = None

    def build(self, st: State, train: bool) -> None:
        """(Re)build ``st.index`` from the live vectors in the files; ``train`` allows training."""
        import faiss

        n = st.n
        trainable = self.min_train > 0
        idx = None
        if trainable and train and n >= self.min_train:
            idx = faiss.IndexIDMap2(faiss.index_factory(self.dim, self.factory, faiss.METRIC_INNER_PRODUCT))
            sample = self._sample(st, max(self.min_train, min(n, 200_000, 256 * max(self.nlist, 256))))
            try:
                idx.train(sample)
                st.fallback, st.trained_rows = False, n
            except RuntimeError as e:  # e.g. fewer rows than IVF lists with a low train_min_rows
                idx = None
                st.note = f"training {self.factory} failed ({str(e).splitlines()[-1][:120]}); searching exactly"
        elif not trainable:
            idx = faiss.IndexIDMap2(faiss.index_factory(self.dim, self.factory, faiss.METRIC_INNER_PRODUCT))
            st.fallback = False
        if idx is None:  # exact search until the factory can be trained
            idx = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            st.fallback, st.trained_rows = True, 0
        for lab, v in self.files.iter_vectors(st.man):
            sel = st.positions(lab) >= 0
            if sel.any():
                idx.add_with_ids(np.ascontiguousarray(v[sel]), lab[sel])
        st.index = idx
        st.dead_in_index = set()
        self.setup(st)

    def _sample(self, st: State, size: int) -> np.ndarray:
        rng = np.random.default_rng(12345)
        p = min(1.0, size / max(1, st.n))
        out = []
        for lab, v in self.files.iter_vectors(st.man):
            sel = st.positions(lab) >= 0
            if p < 1.0:
                sel &= rng.random(len(lab)) < p
            if sel.any():
                out.append(v[sel])
        return np.ascontiguousarray(np.concatenate(out) if out else np.zeros((0, self.dim), np.float32))

    def add(self, st: State, vecs: np.ndarray, labels: np.ndarray) -> None:
        """Add committed vectors to the live index (the faiss GPU copy is re-made on the next search; the
        torch copy takes them as they are)."""
        st.index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), labels)
        st.gpu_index = None
        if st.torch_exact is not None:
            st.torch_exact.add(vecs, labels)

    def due(self, st: State) -> tuple[bool, bool]:
        """``(rebuild, train)``: whether ``optimize`` should rebuild the index, and whether it may train."""
        n = st.n
        ntotal = st.index.ntotal if st.index is not None else 0
        dead = len(st.dead_in_index)
        trainable = self.min_train > 0
        ie = st.man.get("index") or {}
        rebuild = train = False
        if ie and ie.get("factory") != self.factory:
            rebuild = train = True
        if trainable:
            if n >= self.min_train and (st.fallback or n > 8 * max(1, st.trained_rows)):
                rebuild = train = True
            elif dead > 0.3 * max(1, ntotal):
                rebuild, train = True, not st.fallback
        elif dead > 0.2 * max(1, ntotal):
            rebuild = True
        return rebuild, train or not trainable

    # --- searching -----------------------------------------------------------------------------
    def search(self, st: State, q: np.ndarray, k: int, allowed: np.ndarray | None,
               n_allowed: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, labels) over the live rows, or only the ``allowed`` positions."""
        t = self._torch(st)
        if t is not None:
            return t.search(st, q, k, allowed)
        if allowed is None and not st.dead_in_index:
            return self._index_search(st, q, k, None)
        return self._restricted_search(st, q, k, st.live if allowed is None else allowed, n_allowed)

    def _params(self, st: State, k: int, sel):
        import faiss

        base = st.base
        if isinstance(base, faiss.IndexIVF):
            p = faiss.SearchParametersIVF()
            p.nprobe = int(base.nprobe)
        elif isinstance(base, faiss.IndexHNSW):
            p = faiss.SearchParametersHNSW()
            p.efSearch = max(self.ef_search, int(k))
        elif sel is None:
            return None
        else:
            p = faiss.SearchParameters()
        if sel is not None:
            p.sel = sel
        return p

    def _index_search(self, st: State, q: np.ndarray, k: int, sel) -> tuple[np.ndarray, np.ndarray]:
        if sel is None and k <= 2048:
            g = self._gpu_index(st)
            if g is not None:
                with self._gpu_lock:
                    return g.search(q, k)
        params = self._params(st, k, sel)
        if params is None:
            return st.index.search(q, k)
        return st.index.search(q, k, params=params)

    def _restricted_search(self, st: State, q: np.ndarray, k: int, allowed: np.ndarray,
                           n_allowed: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        allowed_labels = st.lab[allowed]
        if n_allowed <= self.exact_filter_rows and not isinstance(st.base, faiss.IndexFlat):
            return self._brute(st, q, k, allowed_labels)
        ntotal = st.index.ntotal
        if n_allowed <= ntotal // 2:
            inner = faiss.IDSelectorBatch(allowed_labels)
            sel = inner
        else:  # exclude the (fewer) others: disallowed live rows + labels no longer live
            disallowed = np.concatenate([st.lab[st.live & ~allowed],
                                         np.fromiter(st.dead_in_index, dtype=np.int64, count=len(st.dead_in_index))])
            inner = faiss.IDSelectorBatch(disallowed)
            sel = faiss.IDSelectorNot(inner)
        try:
            D, I = self._index_search(st, q, k, sel)
        except RuntimeError:  # this index type takes no selector: exact over the allowed rows
            return self._brute(st, q, k, allowed_labels)
        del inner
        short = (I[:, :k] < 0).any(axis=1)
        if short.any():  # approximate index missed allowed rows: answer those queries exactly
            D2, I2 = self._brute(st, q[short], k, allowed_labels)
            D, I = D.copy(), I.copy()
            D[short], I[short] = D2, I2
        return D, I

    def _brute(self, st: State, q: np.ndarray, k: int, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the vectors of ``labels`` (reconstructed from the index, in chunks)."""
        nq = q.shape[0]
        bestD = np.full((nq, 0), -np.inf, dtype=np.float32)
        bestI = np.full((nq, 0), -1, dtype=np.int64)
        for off in range(0, len(labels), _BRUTE_CHUNK):
            lab = labels[off:off + _BRUTE_CHUNK]
            try:
                v = st.index.reconstruct_batch(np.ascontiguousarray(lab))
            except RuntimeError:  # this index cannot reconstruct: read the stored vectors
                v = self.files.vectors_for(st.man, lab)
            s = q @ v.T
            D = np.concatenate([bestD, s.astype(np.float32)], axis=1)
            I = np.concatenate([bestI, np.broadcast_to(lab, s.shape)], axis=1)
            if D.shape[1] > k:
                part = np.argpartition(-D, k - 1, axis=1)[:, :k]
                D, I = np.take_along_axis(D, part, 1), np.take_along_axis(I, part, 1)
            bestD, bestI = D, I
        order = np.argsort(-bestD, axis=1, kind="stable")
        return np.take_along_axis(bestD, order, 1), np.take_along_axis(bestI, order, 1)

    @property
    def mode(self) -> str:
        """The search path asked for: ``$IMGRAG_SEARCH_DEVICE``, else ``search_device``; ``gpu=False`` → cpu."""
        return gpu_search.resolve_mode(self.search_device, self.gpu)

    def faiss_gpus(self) -> int:
        """GPUs the installed faiss can use (0 without GPU support); asked once per store."""
        if self._faiss_gpus is None:
            try:
                import faiss

                self._faiss_gpus = int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0
            except Exception:  # noqa: BLE001 - a broken CUDA setup means "no GPU"
                self._faiss_gpus = 0
        return self._faiss_gpus

    def _torch(self, st: State):
        """The state's resident torch copy when this store searches with torch; else None.

        ``torch…`` modes build it or fail with the reason; ``auto`` takes it only without faiss-gpu and
        with a CUDA GPU, and falls back to faiss on the CPU (with a note in ``imgrag info``) if it fails."""
        if st.torch_exact is not None:
            return st.torch_exact
        mode = self.mode
        if mode == "auto":
            if st.torch_error is not None or self.faiss_gpus() > 0 or not gpu_search.cuda_present():
                return None
            device = "cuda"
        elif mode.startswith("torch"):
            device = gpu_search.torch_device(mode)
        else:
            return None
        with self._gpu_lock:
            if st.torch_exact is None:
                try:
                    st.torch_exact = self._torch_copy(st, device)
                except Exception as e:
                    if mode != "auto":
                        raise ImgragError(f"search_device {mode}: the vectors could not be put on {device} "
                                          f"({str(e).splitlines()[-1][:200] if str(e) else type(e).__name__})") from e
                    st.torch_error = str(e).splitlines()[-1][:160] if str(e) else type(e).__name__
                    return None
            return st.torch_exact

    def _torch_copy(self, st: State, device: str) -> "gpu_search.TorchExact":
        """Every vector the index holds (exact storage: read from it, in chunks) or, for quantised indexes,
        the live rows' stored vectors (from the entry files), resident on ``device``."""
        t = gpu_search.TorchExact(device, self.dim, self.search_precision)
        t.check_room(st.n)
        if exact_storage(st.base):
            labels = faiss_labels(st.index)
            step = gpu_search.CHUNK_ROWS
            for off in range(0, len(labels), step):
                n = min(step, len(labels) - off)
                t.add(st.base.reconstruct_n(off, n), labels[off:off + n])
        else:
            for lab, v in self.files.iter_vectors(st.man):
                sel = st.positions(lab) >= 0
                if sel.any():
                    t.add(v[sel], lab[sel])
        return t

    def _gpu_index(self, st: State):
        """The index cloned to every GPU faiss-gpu sees (sharded: each GPU holds 1/n of the vectors), when
        the mode allows it (``auto`` or ``faiss-gpu``); else None."""
        if self.mode not in ("auto", "faiss-gpu") or st.gpu_error is not None:
            return None
        if st.gpu_index is not None:
            return st.gpu_index
        with self._gpu_lock:
            if st.gpu_index is not None:
                return st.gpu_index
            try:
                import faiss

                ngpu = self.faiss_gpus()
                if ngpu <= 0:
                    st.gpu_error = "faiss has no GPU support or sees no GPU"
                    return None
                if ngpu > 1:
                    co = faiss.GpuMultipleClonerOptions()
                    co.shard = True  # 1/n of the vectors per GPU: n GPUs hold n× the collection, search in parallel
                    try:
                        st.gpu_index = faiss.index_cpu_to_all_gpus(st.index, co=co, ngpu=ngpu)
                        return st.gpu_index
                    except Exception as e:  # noqa: BLE001 - e.g. an index type the multi-GPU cloner lacks
                        st.note = f"faiss multi-GPU clone failed ({str(e).splitlines()[-1][:120]}); GPU 0 only"
                if self._gpu_res is None:
                    self._gpu_res = faiss.StandardGpuResources()
                st.gpu_index = faiss.index_cpu_to_gpu(self._gpu_res, 0, st.index)
            except Exception as e:  # e.g. HNSW has no GPU version: search on CPU
                st.gpu_error = str(e).splitlines()[-1][:160] if str(e) else type(e).__name__
                return None
            return st.gpu_index

    # --- reporting -----------------------------------------------------------------------------
    def describe(self, st: State) -> dict:
        """Index facts for ``imgrag info``."""
        ie = st.man.get("index") or {}
        if st.fallback:
            why = (f"{self.factory} needs >= {self.min_train} rows to train, has {st.n}"
                   if st.n < self.min_train else f"{self.factory} will be trained by the next optimize()")
            index = f"Flat (exact search; {why})"
        else:
            index = self.factory
        d = {"factory": self.factory, "index": index, "rows": st.n,
             "exact": bool(st.fallback) or self.factory == "Flat",
             "files": len(st.man["entries"]), "index_vectors": int(st.index.ntotal),
             "index_saved": bool(ie) and ie.get("next_label") == st.man["next_label"]}
        if self.min_train:
            d["train_min_rows"] = self.min_train
            d["trained_rows"] = st.trained_rows
        if self.nlist:
            d["nprobe"] = self.nprobe
        if "HNSW" in self.factory:
            d["ef_search"] = self.ef_search
        d["gpu"] = st.gpu_index is not None or (st.torch_exact is not None and st.torch_exact.device.type == "cuda")
        d["search_device"] = self.mode
        if st.torch_exact is not None:
            d["search"] = st.torch_exact.describe()
        elif st.gpu_index is not None:
            d["search"] = f"faiss-gpu on {self.faiss_gpus()} GPU(s) (unfiltered searches)"
        if st.gpu_error and self.mode in ("auto", "faiss-gpu") and self.faiss_gpus() > 0:
            d["gpu_note"] = st.gpu_error
        if st.torch_error and self.mode == "auto":
            d["gpu_note"] = f"torch search on CUDA not used: {st.torch_error}"
        if st.note:
            d["note"] = st.note
        return d
