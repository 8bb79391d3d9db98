"""Keeping an index current (``imgrag watch``, ``serve --watch``): file-system events or rescans → a bounded
set of dirty paths → small batches through the ordinary incremental pipeline (no second indexer).

- **Batches.** The paths that became *ready* are :func:`~imgrag.indexer.pipeline.build_index`'s roots
  (files and folders; pruning stays within the roots), so the planner does new / changed / renamed (vector
  reused by content hash) on just them. Deleted paths cannot be roots: :func:`prune_missing` removes their
  rows *after* the batch's additions, so a renamed file still finds its old row's vector.
- **Ready.** Nothing happened to a file for ``settle`` s and its size/mtime stayed the same another
  ``settle`` s (half-copied files are not indexed as corrupt); with inotify, a file written to waits for its
  close (at most ``open_grace`` s). Deletions wait until no addition is pending (at most ``max_defer`` s).
- **Bounded memory.** Events only update :class:`DirtySet` (O(depth) each); past ``max_pending`` files
  they coalesce into their folders, past ``max_dirs`` folders into the watched roots.
- **Rescans** (at start, then every ``rescan_every`` s) compare a listing with the index
  (:func:`~imgrag.indexer.plan.make_plan`) and feed the same set: the fallback for network mounts, and the
  only source with ``poll=True`` or without watchdog. An unreachable root keeps its rows.
- **One writer.** Each batch takes the writer lock (readers never wait); while another writer holds it the
  batch is put back and retried with a bounded backoff, logged once. Commits are atomic; Ctrl-C ends the
  running batch's pipeline run cleanly and is raised again as KeyboardInterrupt.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.indexer.plan import make_plan
from imgrag.indexer.scan import is_under, normalize_roots, scan
from imgrag.indexer.sources import supported_extensions
from imgrag.retrieval.errors import ImgragError, IndexLockedError
from imgrag.retrieval.paths import to_fs, to_stored

log = logging.getLogger("imgrag.watch")
INSTALL_HINT = "pip install 'imgrag[watch]'"


@dataclass
class WatchOptions:
    index: IndexOptions = field(default_factory=IndexOptions)
    poll: bool = False  # rescans only (network mounts; no watchdog needed)
    rescan_every: float | None = None  # seconds between rescans; None: 300 with events, 30 when polling
    settle: float = 1.0  # quiet seconds, then seconds of unchanged size/mtime, before a file is indexed
    batch_files: int = 256  # files per batch
    max_pending: int = 5_000  # pending files (or deletions) before they coalesce into their folders
    max_dirs: int = 500  # pending folders before they coalesce into the watched roots
    open_grace: float = 60.0  # a file written to and never closed is taken after this long unchanged
    max_defer: float = 60.0  # deletions wait for pending additions (renames reuse vectors) at most this long
    max_backoff: float = 30.0  # longest wait between tries while another writer holds the lock
    tick: float = 0.1  # seconds between looks at the dirty set when idle

    def every(self, polling: bool) -> float:
        if self.rescan_every is not None:
            return max(0.05, float(self.rescan_every))
        return 30.0 if polling else 300.0


@dataclass
class BatchResult:
    """What one batch did (``imgrag watch`` prints one line per batch)."""

    paths: int  # files and folders indexed as roots
    embedded: int = 0
    reused: int = 0
    deleted: int = 0
    skipped: int = 0
    total_items: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__, seconds=round(self.seconds, 3))


@dataclass
class _Mark:
    last: float  # monotonic time of the latest event (or listing) that touched the file
    writing: bool = False  # written to and not closed yet (only inotify says)
    sig: tuple[int, int] | None = None  # (size, mtime_ns) when last looked at
    sig_at: float = 0.0  # since when ``sig`` has been seen


@dataclass
class Batch:
    files: dict[str, _Mark]
    dirs: dict[str, float]
    gone: dict[str, float]

    def roots(self) -> list[str]:
        """Existing files and folders to index, none inside another (the scan would list it twice)."""
        paths = [p for p in (*self.files, *self.dirs) if os.path.exists(to_fs(p))]
        keep = set(paths)
        return [p for p in paths if not any(a in keep for a in _ancestors(p))]


class DirtySet:
    """What changed and is not indexed yet, bounded in size; shared by the event thread and the loop."""

    def __init__(self, roots: Sequence[str], opts: WatchOptions) -> None:
        self.roots = list(roots)
        self.opts = opts
        self.files: dict[str, _Mark] = {}
        self.dirs: dict[str, float] = {}
        self.gone: dict[str, float] = {}
        self.coalesced = 0  # times the set had to coalesce (tests and logs)
        self._lock = threading.Lock()

    # -- what events and listings report -------------------------------------------------------
    def file(self, path: str, now: float, writing: bool | None = None, sig: tuple[int, int] | None = None,
             sig_at: float | None = None) -> None:
        with self._lock:
            d = self._covering(path, self.dirs)
            if d is not None:  # its folder is indexed as a whole
                self.dirs[d] = max(self.dirs[d], now)
                return
            m = self.files.get(path)
            if m is None:
                m = self.files[path] = _Mark(now)
            m.last = max(m.last, now)
            if writing is not None:
                m.writing = writing
            if sig is not None and sig != m.sig:
                m.sig, m.sig_at = sig, now if sig_at is None else sig_at
            self._bound()

    def folder(self, path: str, now: float) -> None:
        with self._lock:
            d = self._covering(path, self.dirs)
            self.dirs[d if d is not None else path] = max(self.dirs.get(d or path, now), now)
            self._bound()

    def removed(self, path: str, now: float) -> None:
        with self._lock:
            self.files.pop(path, None)
            d = self._covering(path, self.gone)
            self.gone[d if d is not None else path] = max(self.gone.get(d or path, now), now)
            self._bound()

    # -- what the loop takes ---------------------------------------------------------------------
    def take(self, now: float) -> Batch | None:
        """The ready part (files up to ``batch_files``), removed from the set; None when nothing is ready."""
        o = self.opts
        quiet = now - o.settle
        with self._lock:
            dirs = {d: t for d, t in self.dirs.items() if t <= quiet}
            files: dict[str, _Mark] = {}
            for p, m in list(self.files.items()):
                if self._covering(p, self.dirs) is not None:
                    del self.files[p]  # its folder is pending: the folder's run lists it
                    continue
                if m.last > quiet or (m.writing and m.last > now - o.open_grace):
                    continue
                try:
                    st = os.stat(to_fs(p))
                except OSError:  # gone, or a broken link (its row goes); else unreadable: a rescan retries
                    del self.files[p]
                    if not os.path.exists(to_fs(p)):
                        self.gone[p] = max(self.gone.get(p, m.last), m.last)
                    continue
                sig = (st.st_size, st.st_mtime_ns)
                if sig != m.sig:
                    m.sig, m.sig_at = sig, now
                    continue
                if m.sig_at > quiet:
                    continue
                files[p] = m
                if len(files) >= o.batch_files:
                    break
            for p in files:
                del self.files[p]
            for d in dirs:
                del self.dirs[d]
            adding = bool(self.files or self.dirs)
            gone = {p: t for p, t in self.gone.items() if t <= quiet and (not adding or t <= now - o.max_defer)}
            for p in gone:
                del self.gone[p]
        if not (files or dirs or gone):
            return None
        return Batch(files, dirs, gone)

    def restore(self, batch: Batch) -> None:
        """Put a batch back (the writer lock was taken by someone else)."""
        with self._lock:
            for p, m in batch.files.items():
                self.files.setdefault(p, m)
            for d, t in batch.dirs.items():
                self.dirs[d] = max(self.dirs.get(d, t), t)
            for g, t in batch.gone.items():
                self.gone[g] = max(self.gone.get(g, t), t)
            self._bound()

    # -- bounds ------------------------------------------------------------------------------------
    def _covering(self, path: str, where: dict) -> str | None:
        if not where:
            return None
        if path in where:
            return path
        for a in _ancestors(path):
            if a in where:
                return a
        return None

    def _parent(self, path: str) -> str:
        """The folder a path coalesces into, never above its watched root."""
        parent = os.path.dirname(path)
        return parent if is_under(parent, self.roots) else self._root_of(path)

    def _root_of(self, path: str) -> str:
        return next((r for r in self.roots if is_under(path, [r])), path)

    def _bound(self) -> None:
        o = self.opts
        if len(self.files) > o.max_pending:
            for p, m in self.files.items():
                d = self._parent(p)
                self.dirs[d] = max(self.dirs.get(d, m.last), m.last)
            self.files.clear()
            self.coalesced += 1
        if len(self.dirs) > o.max_dirs:
            self.dirs = _coalesce(self.dirs, self._root_of)
            self.coalesced += 1
        if len(self.gone) > o.max_pending:
            self.gone = _coalesce(self.gone, self._parent)
            if len(self.gone) > o.max_dirs:
                self.gone = _coalesce(self.gone, self._root_of)
            self.coalesced += 1


def _coalesce(entries: dict[str, float], up: Callable[[str], str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for p, t in entries.items():
        q = up(p)
        out[q] = max(out.get(q, t), t)
    keep = set(out)  # drop entries inside another one
    return {p: t for p, t in out.items() if not any(a in keep for a in _ancestors(p))}


def _ancestors(path: str) -> Iterable[str]:
    p = path
    while True:
        q = os.path.dirname(p)
        if q == p or not q:
            return
        yield q
        p = q


class Watcher:
    """Watch ``roots`` and keep ``index`` current until :meth:`stop` (or Ctrl-C in :meth:`run`)."""

    def __init__(self, index, roots: Iterable[str], options: WatchOptions | None = None,
                 on_batch: Callable[[BatchResult], None] | None = None) -> None:
        self.index = index
        self.opts = options or WatchOptions()
        self.opts.index.validate()
        self.roots = normalize_roots(roots)
        for r in self.roots:
            if not os.path.exists(to_fs(r)):
                raise ImgragError(f"path not found: {r}")
        self.exts = self.opts.index.extensions or supported_extensions()
        self.index_root = to_stored(os.path.abspath(str(index.root))) if index.location.local else None
        self.dirty = DirtySet(self.roots, self.opts)
        self.on_batch = on_batch
        self.polling = self.opts.poll
        self.batches = 0
        self.rescans = 0
        self._stop = threading.Event()
        self._has_close = False
        self._missing_said: set[str] = set()
        self.thread: threading.Thread | None = None

    # -- running -----------------------------------------------------------------------------------
    def run(self) -> None:
        """Watch until :meth:`stop`; a Ctrl-C ends the running batch's pipeline run cleanly (its commits
        are kept) and is raised again as KeyboardInterrupt."""
        observer = self._start_events()
        every = self.opts.every(self.polling)
        next_rescan = time.monotonic()  # the first rescan catches what changed while nobody watched
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_rescan:
                    self.rescan()
                    next_rescan = time.monotonic() + every
                batch = self.dirty.take(time.monotonic())
                if batch is None:
                    self._stop.wait(min(self.opts.tick, max(0.0, next_rescan - time.monotonic())))
                    continue
                self._apply(batch)
        finally:
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)

    def start_thread(self) -> threading.Thread:
        """Run in a daemon thread (``imgrag serve --watch``); errors are logged, never raised."""
        def target() -> None:
            try:
                self.run()
            except Exception as e:  # noqa: BLE001 - the server goes on; the user sees the log line
                log.error("watching stopped: %s", e)

        self.thread = threading.Thread(target=target, name="imgrag-watch", daemon=True)
        self.thread.start()
        return self.thread

    def stop(self, wait: float | None = None) -> None:
        self._stop.set()
        if wait is not None and self.thread is not None:
            self.thread.join(timeout=wait)

    # -- events --------------------------------------------------------------------------------------
    def _start_events(self):
        if self.polling:
            return None
        try:
            from watchdog.observers import Observer
        except ImportError:
            log.warning("file-system events need watchdog (%s); rescanning every %gs instead", INSTALL_HINT,
                        self.opts.every(True))
            self.polling = True
            return None
        observer = Observer()
        handler = _Handler(self)
        try:
            for r in self.roots:
                fs = to_fs(r)
                if os.path.isdir(fs):
                    observer.schedule(handler, fs, recursive=True)
                else:  # a single file: its folder, filtered to it
                    observer.schedule(handler, os.path.dirname(fs), recursive=False)
            observer.start()
        except OSError as e:  # e.g. the inotify watch limit on a huge tree
            log.warning("cannot watch for file-system events (%s; raise fs.inotify.max_user_watches); rescanning "
                        "every %gs instead", e.strerror or e, self.opts.every(True))
            self.polling = True
            return None
        self._has_close = "inotify" in type(observer).__module__.lower() or "Inotify" in type(observer).__name__
        return observer

    def relevant(self, path: str, is_dir: bool) -> bool:
        """Under a watched root, outside the index, not hidden (as the scan), a supported file type."""
        root = next((r for r in self.roots if is_under(path, [r])), None)
        if root is None or (self.index_root is not None and is_under(path, [self.index_root])):
            return False
        if not self.opts.index.include_hidden and any(
                part.startswith(".") for part in path[len(root):].split("/") if part):
            return False
        return is_dir or os.path.splitext(path)[1].lower() in self.exts

    # -- rescans ----------------------------------------------------------------------------------
    def rescan(self) -> None:
        """List the reachable roots, compare with the index, and mark what differs as dirty."""
        roots = []
        for r in self.roots:
            if os.path.exists(to_fs(r)):
                roots.append(r)
                self._missing_said.discard(r)
            elif r not in self._missing_said:  # an unmounted share must not look like deleted photos
                log.warning("%s is not reachable; keeping its rows until it is back", r)
                self._missing_said.add(r)
        self.rescans += 1
        if not roots:
            return
        import pyarrow as pa
        import pyarrow.compute as pc

        states = self.index.store.file_states()
        listing = scan(roots, self.exts, exclude=[self.index_root] if self.index_root else [],
                       include_hidden=self.opts.index.include_hidden)
        plan = make_plan(states, listing, roots, self.index.skipped(), retry_skipped=False, prune=True)
        now = time.monotonic()
        quiet = now - self.opts.settle  # a listing is no event: only the size/mtime check waits
        for b in plan.images.to_batches():
            for p, s, m in zip(*(b.column(c).to_pylist() for c in ("path", "size", "mtime_ns"))):
                self.dirty.file(p, quiet, sig=(s, m), sig_at=now)
        for e in plan.documents:
            self.dirty.file(e.path, quiet, sig=(e.size, e.mtime_ns), sig_at=now)
        if plan.gone:
            gone = states.filter(pc.is_in(states["id"], value_set=pa.array(plan.gone, pa.string())))["path"]
            for p in dict.fromkeys(gone.to_pylist()):
                self.dirty.removed(p, quiet)

    # -- batches ------------------------------------------------------------------------------------
    def _apply(self, batch: Batch) -> None:
        delay, said = 0.5, False
        while True:
            try:
                with self.index.writing():  # one lock for the additions and the deletions of this batch
                    res = self._index_batch(batch)
                break
            except IndexLockedError as e:
                if not said:
                    log.warning("waiting for the writer lock (%s); retrying", e)
                    said = True
                if self._stop.wait(delay):
                    self.dirty.restore(batch)
                    return
                delay = min(delay * 2, self.opts.max_backoff)
            except ImgragError as e:  # e.g. a folder made unreadable meanwhile: the next rescan retries
                log.warning("batch of %d paths not indexed: %s", len(batch.files) + len(batch.dirs), e)
                return
        if said:
            log.warning("writer lock free again; indexing")
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(res)

    def _index_batch(self, batch: Batch) -> BatchResult:
        t0 = time.perf_counter()
        roots = batch.roots()
        res = BatchResult(paths=len(roots))
        if roots:
            rep = build_index(self.index, roots, self.opts.index)
            res.embedded, res.reused, res.deleted = rep.embedded, rep.reused, rep.deleted
            res.skipped = len(rep.skipped)
            if rep.interrupted:  # Ctrl-C: what was committed stays; nothing else of this batch runs
                raise KeyboardInterrupt
        if batch.gone:
            reachable = [g for g in batch.gone if any(os.path.exists(to_fs(r)) for r in self.roots
                                                      if is_under(g, [r]))]
            res.deleted += prune_missing(self.index, reachable)
        res.total_items = self.index.store.count()
        res.seconds = time.perf_counter() - t0
        return res


def prune_missing(index, paths: Sequence[str]) -> int:
    """Delete the rows (and skip records) under ``paths`` whose files no longer exist; returns the rows
    deleted. A path deleted and created again keeps its row (the pipeline run updated it)."""
    if not paths:
        return 0
    import pyarrow.compute as pc

    with index.writing():
        states = index.store.file_states()
        ids: list[str] = []
        if states.num_rows:
            col = states["path"]
            under = None
            for g in paths:  # vectorised is_under
                m = pc.or_(pc.equal(col, g), pc.starts_with(col, g.rstrip("/") + "/"))
                under = m if under is None else pc.or_(under, m)
            cand = states.filter(under).select(["id", "path"])
            exists: dict[str, bool] = {}
            for i, p in zip(cand["id"].to_pylist(), cand["path"].to_pylist()):
                if p not in exists:
                    exists[p] = os.path.exists(to_fs(p))
                if not exists[p]:
                    ids.append(i)
            if ids:
                index.store.delete(ids)
        recs = index.skipped()
        keep = [r for r in recs if not _missing_under(str(r.get("path") or ""), paths)]
        if len(keep) != len(recs):
            index.write_skipped(keep)
    if ids:
        log.info("removed %d rows of deleted files", len(ids))
    return len(ids)


def _missing_under(path: str, roots: Sequence[str]) -> bool:
    base = path.rsplit("#page=", 1)[0] if "#page=" in path else path
    return bool(base) and is_under(base, roots) and not os.path.lexists(to_fs(base))


class _Handler:
    """watchdog calls :meth:`dispatch` from its emitter thread: O(depth) work per event, no I/O."""

    def __init__(self, watcher: Watcher) -> None:
        self.w = watcher

    def dispatch(self, event) -> None:
        kind = event.event_type
        if kind in ("opened", "closed_no_write"):
            return
        w, now = self.w, time.monotonic()
        src = to_stored(os.fsdecode(event.src_path))
        dest = to_stored(os.fsdecode(event.dest_path)) if kind == "moved" and event.dest_path else None
        d = w.dirty
        if event.is_directory:
            if kind in ("deleted", "moved") and w.relevant(src, True):
                d.removed(src, now)
            if kind == "created" and w.relevant(src, True):
                d.folder(src, now)  # moved in from outside, or new: its contents are listed by the run
            if dest is not None and w.relevant(dest, True):
                d.folder(dest, now)
            return  # "modified" on a folder: its files' own events tell what changed
        if kind in ("deleted", "moved") and w.relevant(src, False):
            d.removed(src, now)
        if dest is not None and w.relevant(dest, False):
            d.file(dest, now, writing=False)  # renamed into place: complete
        elif kind in ("created", "modified", "closed", "attrib") and w.relevant(src, False):
            # a write opens a wait for its close (inotify only); a link, a touch or a chmod needs none
            writing = {"modified": w._has_close or None, "closed": False}.get(kind)
            d.file(src, now, writing=writing)
