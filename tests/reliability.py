"""Helpers for the reliability tests (bad input, crash safety, concurrency).

- :class:`LayoutEmbedder`: like ``fakes.FakeEmbedder`` but orientation-sensitive (mean colour of
  each quadrant of a 16×16 thumbnail), so "stored upright" is checkable from the stored vector.
- :func:`all_rows`: every row of an index by id, failing on duplicates.
- :func:`index_worker_main`: the body of an indexer subprocess (``python tests/reliability.py
  index ...``) used by the crash and concurrency tests; also a fork server (``serve``) that imports
  torch/imgrag once and forks one indexer child per request, so 100 SIGKILLed runs do not pay
  100 interpreter start-ups.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from fakes import FakeEmbedder  # noqa: E402
from imgrag.retrieval.embedders.base import l2_normalize  # noqa: E402

LAYOUT_DIM = 14


class LayoutEmbedder(FakeEmbedder):
    """Quadrant mean colours (4 × RGB) + 2 constants, L2-normalised: rotations change the vector."""

    def __init__(self, model_id: str = "fake-layout", batch_size: int = 8) -> None:
        super().__init__(model_id, batch_size)

    @property
    def dim(self) -> int:
        return LAYOUT_DIM

    def fingerprint(self) -> dict:
        return {"model": self.model_id, "thumb": 16, "layout": 2}

    def embed_pixels(self, pixels) -> np.ndarray:
        self.calls += 1
        self.images_embedded += int(pixels.shape[0])
        x = pixels.numpy().astype(np.float32)
        q = [x[:, :, :8, :8], x[:, :, :8, 8:], x[:, :, 8:, :8], x[:, :, 8:, 8:]]
        v = np.concatenate([m.mean(axis=(2, 3)) - 0.5 for m in q] + [np.full((len(x), 2), 0.05, np.float32)], axis=1)
        return l2_normalize(v)

    def embed_texts(self, texts) -> np.ndarray:
        out = []
        for t in texts:
            seed = int.from_bytes(t.encode()[:4].ljust(4, b"\0"), "little")
            out.append(np.random.default_rng(seed).standard_normal(LAYOUT_DIM).astype(np.float32))
        return l2_normalize(np.stack(out))

    def vector_of(self, img) -> np.ndarray:
        """The vector this embedder gives a PIL image (what the indexer should store for it)."""
        return self.embed_pixels(self.image_transform()(img)[None])[0]


def all_rows(index) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for b in index.store.scan():
        for r in b.to_pylist():
            assert r["id"] not in out, f"duplicate row {r['id']}"
            out[r["id"]] = r
    return out


def tiny_collection(root: Path, n: int, seed: int = 0, size: int = 12) -> list[Path]:
    """``n`` small distinct PNG/JPEG images in a few sub-folders (sorted paths)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sub = root / f"d{i % 7}"
        sub.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, size=(size, size + i % 5, 3), dtype=np.uint8)
        p = sub / f"im{i:05d}.{'png' if i % 3 else 'jpg'}"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return sorted(paths)


# ------------------------------------------------------------------------------------------------
# indexer subprocess
# ------------------------------------------------------------------------------------------------
def run_index(index_dir: str, store: str, coll: str, commit_every: int, batch_size: int, workers: int,
              model: str = "fake-rgb", rebuild: bool = False, kill_at: str = "") -> int:
    from imgrag.indexer.pipeline import IndexOptions, build_index
    from imgrag.retrieval.index import Index

    if os.environ.get("IMGRAG_TEST_SABOTAGE") == "torn_manifest":
        _sabotage_manifest_writes()
    if kill_at:
        _kill_at(kill_at)
    idx = Index.create_or_open(index_dir, FakeEmbedder(model), store=store, rebuild=rebuild)
    rep = build_index(idx, [coll], IndexOptions(batch_size=batch_size, workers=workers,
                                                 commit_every=commit_every))
    return rep.total_items


def _sabotage_manifest_writes() -> None:
    """For the test that proves the kill harness can fail: manifests written in place, slowly (the
    bug that temp file + rename prevents)."""
    import time

    import imgrag.retrieval.atomic as atomic_mod

    def torn_write(path, data: bytes, durable: bool = True) -> None:
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(0.02)
            f.write(data[len(data) // 2:])

    atomic_mod.atomic_write_bytes = torn_write


#: named moments of a rebuild's switch where :func:`_kill_at` SIGKILLs the process itself
KILL_POINTS = ("before_switch", "switch_temp_written", "after_switch", "mid_delete", "after_delete")


def _kill_at(point: str) -> None:
    """SIGKILL this process at ``point`` of the rebuild's switch (deterministic moments the random
    delays would rarely hit): before the new manifest is written, with its temp file written but not
    renamed, right after the switch, after the first deletion of the old generation, after the last."""
    import signal

    import imgrag.retrieval.atomic as atomic_mod
    import imgrag.retrieval.generations as gen_mod
    from imgrag.retrieval.index import Index

    die = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
    real_publish, real_collect, real_remove = Index.publish, gen_mod.collect, gen_mod.remove
    real_write = atomic_mod.atomic_write_bytes
    state = {"publishing": False, "removed": 0}

    def publish(self):
        if not self.draft:
            return real_publish(self)
        if point == "before_switch":
            die()
        state["publishing"] = True
        return real_publish(self)

    def write(path, data, durable=True):
        if state["publishing"] and os.path.basename(path) == "imgrag.json":
            if point == "switch_temp_written":
                tmp = atomic_mod.temp_name(path)
                with open(tmp, "wb") as f:
                    f.write(data)
                die()
            real_write(path, data, durable=durable)
            if point == "after_switch":
                die()
            return
        real_write(path, data, durable=durable)

    def remove(loc, name):
        real_remove(loc, name)
        state["removed"] += 1
        if state["publishing"] and point == "mid_delete":
            die()

    def collect(*a, **kw):
        out = real_collect(*a, **kw)
        if state["publishing"] and point == "after_delete":
            die()
        return out

    Index.publish = publish
    atomic_mod.atomic_write_bytes = write
    gen_mod.remove = remove
    gen_mod.collect = collect


def index_worker_main(argv: list[str]) -> None:
    """``index INDEX STORE COLL COMMIT_EVERY BATCH WORKERS [MODEL [REBUILD [KILL_AT]]]``: one run, prints
    ``done N`` (REBUILD: 1 for ``--rebuild``; KILL_AT: one of :data:`KILL_POINTS`).

    ``serve``: fork server. Reads lines of the same arguments (from INDEX on) on stdin,
    forks a child that runs the indexer, prints ``pid N`` right after the fork and ``exit PID CODE``
    when the child ends (or is killed: CODE is then ``-SIGNAL``).
    """
    if argv[0] == "index":
        n = run_index(*_run_args(argv[1:]))
        print(f"done {n}", flush=True)
        return
    assert argv[0] == "serve"
    # import everything the child needs once, before any fork; open nothing (no LanceDB runtime yet)
    import faiss  # noqa: F401
    import lancedb  # noqa: F401
    import torch  # noqa: F401
    import torch.utils.data  # noqa: F401

    import imgrag.indexer.pipeline  # noqa: F401
    import imgrag.retrieval.index  # noqa: F401
    import imgrag.retrieval.stores.faiss  # noqa: F401
    import imgrag.retrieval.stores.lance  # noqa: F401
    import PIL.Image  # noqa: F401
    import PIL.PngImagePlugin  # noqa: F401
    import PIL.JpegImagePlugin  # noqa: F401

    print("ready", flush=True)
    for line in sys.stdin:
        a = line.split()
        if not a:
            continue
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                sys.stdin.close()
                run_index(*_run_args(a))
            except BaseException as e:  # noqa: BLE001
                print(f"child error {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                code = 1
            finally:
                sys.stdout.flush()
                os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        print(f"exit {pid} {code}", flush=True)


def _run_args(a: list[str]) -> tuple:
    return (a[0], a[1], a[2], int(a[3]), int(a[4]), int(a[5]), a[6] if len(a) > 6 else "fake-rgb",
            len(a) > 7 and a[7] == "1", a[8] if len(a) > 8 else "")


if __name__ == "__main__":
    index_worker_main(sys.argv[1:])


# ------------------------------------------------------------------------------------------------
# a decoder that crashes natively on hostile input (fault injection)
# ------------------------------------------------------------------------------------------------
HOSTILE_RGB = (13, 37, 66)


class CrashingTransform:
    """The fake embedder's transform, except that an image whose top-left pixel is
    :data:`HOSTILE_RGB` kills the process with SIGSEGV, as a codec bug on a hostile file would."""

    def __call__(self, img):
        import signal

        if img.convert("RGB").getpixel((0, 0)) == HOSTILE_RGB:
            os.kill(os.getpid(), signal.SIGSEGV)
        from fakes import ThumbTransform

        return ThumbTransform()(img)


class CrashingEmbedder(FakeEmbedder):
    def image_transform(self):
        return CrashingTransform()


def record_dirty_peaks(dirty) -> dict[str, int]:
    """Wrap a watcher's DirtySet's entry points (events, rescans, put-backs): after each call, the most pending
    files / folders / deletions it has held so far, and the number of calls."""
    peak = {"files": 0, "dirs": 0, "gone": 0, "calls": 0}

    def recorded(method):
        def call(*a, **kw):
            out = method(*a, **kw)
            peak["calls"] += 1
            for name in ("files", "dirs", "gone"):
                peak[name] = max(peak[name], len(getattr(dirty, name)))
            return out
        return call

    for name in ("file", "folder", "removed", "restore"):
        setattr(dirty, name, recorded(getattr(dirty, name)))
    return peak
