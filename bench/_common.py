"""Shared helpers for the benchmarks in bench/: machine facts, result records, tables, test images,
memory readings and a way to import imgrag from a plain checkout.

Only the standard library and numpy are imported at module level, so every benchmark (bench/gpu.py
included, which must run with a minimal set of packages) can use it.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "results" / "results.jsonl"

# Never reach for the network; allow random-init open_clip architectures (throughput does not depend
# on the weights).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("IMGRAG_ALLOW_RANDOM_WEIGHTS", "1")


# ------------------------------------------------------------------------------------------------
# importing imgrag without an install (bench/gpu.py on a bare GPU machine)
# ------------------------------------------------------------------------------------------------
def ensure_imgrag_importable() -> None:
    """Make ``import imgrag.*`` work from this checkout even when the package is not installed.

    The source folders map to ``imgrag.retrieval`` / ``imgrag.indexer`` / ``imgrag.app`` (setuptools
    package-dir); without an install, register ``imgrag`` as a namespace whose sub-packages point at
    the folders.
    """
    try:
        import imgrag.indexer.pipeline  # noqa: F401

        return
    except ImportError:
        pass
    import importlib.util
    import types

    pkg = sys.modules.get("imgrag") or types.ModuleType("imgrag")
    pkg.__path__ = []  # type: ignore[attr-defined]
    sys.modules["imgrag"] = pkg
    for sub in ("retrieval", "indexer", "app"):
        name = f"imgrag.{sub}"
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, ROOT / sub / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / sub)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        setattr(pkg, sub, mod)
        spec.loader.exec_module(mod)  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------
# machine facts and result records
# ------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 0.0


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu_model(), "ram_gib": ram_gib(), "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        try:
            if torch.cuda.is_available():
                info["gpu"] = torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001
            pass
    return info


def git_commit() -> str:
    try:
        c = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                           timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=ROOT, timeout=10).stdout.strip()
        return (c + ("+dirty" if dirty else "")) if c else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT))
                                             else "python", *sys.argv])


def record(bench: str, figures: Any, params: dict[str, Any] | None = None, results: Path | None = None) -> dict:
    """Append one JSON line (machine, commit, command, time, params, figures) to results.jsonl."""
    path = Path(os.environ.get("IMGRAG_BENCH_RESULTS", results or RESULTS))
    rec = {"bench": bench, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": git_commit(),
           "command": command_line(), "machine": machine_info(), "params": params or {}, "figures": figures}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(rec, default=_json_default) + "\n")
    return rec


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> str:
    """A Markdown table (numbers formatted), printed and returned."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return "–"
            a = abs(v)
            if a >= 1000:
                return f"{v:,.0f}"
            if a >= 100:
                return f"{v:.0f}"
            if a >= 10:
                return f"{v:.1f}"
            if a >= 1:
                return f"{v:.2f}"
            return f"{v:.3f}"
        return "–" if v is None else str(v)

    rows = [[fmt(v) for v in r] for r in rows]
    out = []
    if title:
        out.append(f"\n{title}\n")
    out.append("| " + " | ".join(headers) + " |")
    out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    s = "\n".join(out)
    print(s, flush=True)
    return s


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------------
def _status_kib(pid: int | str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_mib(pid: int | str = "self") -> float:
    return _status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int | str = "self") -> float:
    """The kernel's high-water mark of resident memory (VmHWM) of one process."""
    return _status_kib(pid, "VmHWM") / 1024


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def pss_mib(pid: int) -> float:
    """Proportional set size (shared pages split between sharers): sums correctly across processes."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return rss_mib(pid)


class MemorySampler:
    """Samples, in a thread, the RSS of a process and the summed PSS of it and its descendants."""

    def __init__(self, pid: int | None = None, interval: float = 0.1) -> None:
        self.pid = pid or os.getpid()
        self.interval = interval
        self.peak_rss = 0.0
        self.peak_tree_pss = 0.0
        self.peak_children = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list[int]:
        out, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo += children(p)
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, rss_mib(self.pid))
        tree = self._tree()
        self.peak_children = max(self.peak_children, len(tree) - 1)
        self.peak_tree_pss = max(self.peak_tree_pss, sum(pss_mib(p) for p in tree))

    def __enter__(self) -> "MemorySampler":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.sample()


# ------------------------------------------------------------------------------------------------
# test images made from real photos available offline
# ------------------------------------------------------------------------------------------------
def source_photos(max_side: int | None = None) -> list[np.ndarray]:
    """Real photographs as (H, W, 3) uint8 arrays: scikit-image's and scikit-learn's bundled samples,
    else the JPEGs of data/samples, else (only if none of those exist) procedural pictures."""
    out: list[np.ndarray] = []
    try:
        import skimage.data as d

        for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
                     "stereo_motorcycle", "immunohistochemistry", "camera"):
            try:
                a = getattr(d, name)()
            except Exception:  # noqa: BLE001 - a missing sample is fine
                continue
            a = a[0] if isinstance(a, tuple) else a
            if a.ndim == 2:
                a = np.stack([a] * 3, axis=-1)
            out.append(np.ascontiguousarray(a[..., :3]).astype(np.uint8))
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images

        out += [np.asarray(a, dtype=np.uint8) for a in load_sample_images().images]
    except Exception:  # noqa: BLE001
        pass
    if not out:
        from PIL import Image

        for p in sorted((ROOT / "data" / "samples").rglob("*.jp*g")):
            try:
                out.append(np.asarray(Image.open(p).convert("RGB")))
            except Exception:  # noqa: BLE001
                continue
    if not out:
        out = [_procedural(i) for i in range(8)]
    return out


def _procedural(seed: int, w: int = 640, h: int = 480) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.002, 0.03, 2).tolist() + [rng.uniform(0, 6.28)]
        img[..., c] = 127 + 100 * np.sin(x * fx + y * fy + ph)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, 120)
        m = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[m] = rng.uniform(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def _exif_bytes(i: int) -> bytes:
    from PIL import Image

    ex = Image.Exif()
    ex[0x0110] = "imgrag bench camera"  # Model
    ex[0x0112] = 1  # Orientation
    sub = ex.get_ifd(0x8769)
    sub[0x9003] = f"2021:{1 + i % 12:02d}:{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:00"  # DateTimeOriginal
    return ex.tobytes()


_BASES: dict[tuple, list[np.ndarray]] = {}


def _bases(w: int, h: int, noise: float) -> list[np.ndarray]:
    """Each source photo upscaled (bicubic) to a bit more than w×h, with sensor-like noise added so
    the JPEGs have the detail (and byte size) of camera files; cached per process."""
    from PIL import Image

    key = (w, h, noise)
    if key not in _BASES:
        bw, bh = w + w // 32, h + h // 32
        rng = np.random.default_rng(1234)
        bases = []
        for a in source_photos():
            im = Image.fromarray(a)
            H, W = a.shape[:2]
            s = max(bw / W, bh / H)  # cover, then centre-crop to bw×bh
            im = im.resize((max(bw, round(W * s)), max(bh, round(H * s))), Image.BICUBIC)
            l, t = (im.width - bw) // 2, (im.height - bh) // 2
            arr = np.asarray(im.crop((l, t, l + bw, t + bh)), dtype=np.int16)
            if noise:
                arr = arr + rng.integers(-noise, noise + 1, size=arr.shape, dtype=np.int16)
            bases.append(np.clip(arr, 0, 255).astype(np.uint8))
        _BASES[key] = bases
    return _BASES[key]


def _make_one(args: tuple) -> int:
    i, path, w, h, quality, noise = args
    from PIL import Image

    bases = _bases(w, h, noise)
    b = bases[i % len(bases)]
    rng = np.random.default_rng(i)
    dy, dx = int(rng.integers(0, b.shape[0] - h + 1)), int(rng.integers(0, b.shape[1] - w + 1))
    im = Image.fromarray(b[dy:dy + h, dx:dx + w])
    if (i // len(bases)) % 2:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    gain = 1.0 + float(rng.uniform(-0.06, 0.06))
    im = im.point(lambda v: min(255, int(v * gain)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, exif=_exif_bytes(i))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)
    return len(buf.getvalue())


def make_jpegs(folder: Path, n: int, width: int, height: int, quality: int = 90, noise: int | None = None,
               per_dir: int = 1000, procs: int | None = None, seed_offset: int = 0) -> list[Path]:
    """N distinct JPEGs (real photos, varied crop/flip/exposure, EXIF date) under ``folder``.

    Files go into sub-folders of ``per_dir`` (``d000/``, ``d001/`` …) so that a prefix of the folders
    is a smaller collection. Existing files are kept (a cache); returns the sub-folders in order.
    """
    folder = Path(folder)
    if noise is None:
        noise = 12 if width * height >= 4_000_000 else 4
    todo = []
    dirs = []
    for i in range(n):
        d = folder / f"d{i // per_dir:03d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
            dirs.append(d)
        p = d / f"img{i:06d}.jpg"
        if not p.exists():
            todo.append((i + seed_offset, str(p), width, height, quality, noise))
    if todo:
        t = time.perf_counter()
        procs = procs or max(1, min(len(todo) // 16 + 1, os.cpu_count() or 1))
        if procs > 1:
            import multiprocessing as mp

            with mp.get_context("fork").Pool(procs) as pool:
                sizes = pool.map(_make_one, todo, chunksize=max(1, len(todo) // (procs * 8)))
        else:
            sizes = [_make_one(a) for a in todo]
        log(f"made {len(todo)} JPEGs {width}x{height} q{quality} in {folder} "
            f"({time.perf_counter() - t:.0f}s, mean {np.mean(sizes) / 1e6:.2f} MB)")
    return dirs


def jpeg_files(dirs: Sequence[Path]) -> list[Path]:
    return sorted(p for d in dirs for p in Path(d).glob("*.jpg"))


def median_file_mb(files: Sequence[Path]) -> float:
    return float(np.median([os.path.getsize(p) for p in files])) / 1e6 if files else 0.0


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r
