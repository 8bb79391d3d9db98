"""Search on a GPU behind the FAISS store: which path a store takes, and exact search with torch.

Paths (store option ``search_device``, or the environment variable ``IMGRAG_SEARCH_DEVICE``, which wins):

- ``auto`` (default): **faiss-gpu** when the installed faiss has GPU support and sees a GPU (the index is
  cloned to every GPU, ``index_cpu_to_all_gpus``, for unfiltered searches; :mod:`.ann`); else **exact
  torch search on CUDA** when the machine has a CUDA GPU; else faiss on the CPU.
- ``cpu``: faiss on the CPU only (what ``gpu: false`` also means).
- ``faiss-gpu``: the faiss-gpu clone where it works, faiss on the CPU otherwise (``imgrag info`` says why).
- ``torch`` / ``torch:cuda`` / ``torch:cuda:N`` / ``torch:cpu``: exact torch search on that device
  (``torch`` alone: CUDA if torch sees it, else the CPU). ``torch:cpu`` is how CI tests this path.

:class:`TorchExact` keeps the store's vectors resident on the device in chunks (fp32, or fp16 with
``search_precision: fp16`` at half the memory and ~1e-3 score error), and answers a query block with one
matmul and a top-k per chunk, merged. Deleted and replaced rows, filters and exclusions are a mask over
the resident rows (a label whose row is no longer live, or not allowed, scores −inf), so results are
those of an exact search over the allowed live rows whatever the store's factory.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import numpy as np

from imgrag.retrieval.errors import ImgragError

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.retrieval.stores.faiss.state import State

ENV = "IMGRAG_SEARCH_DEVICE"
MODES = ("auto", "cpu", "faiss-gpu", "torch")
#: Resident rows per chunk: 262,144 × 512 fp32 = 512 MiB, so a chunk's copy on append stays cheap.
CHUNK_ROWS = 262_144
#: Scores held at once per chunk and query block (nq × chunk rows): 64 Mi floats = 256 MiB.
MAX_SCORES = 1 << 26
#: The resident copy may take at most this part of the device's free memory (auto falls back to faiss).
MAX_FREE_FRACTION = 0.5


def check_mode(mode: str | None) -> str:
    """``search_device`` as given, checked (``torch:<device>`` included)."""
    m = str(mode or "auto").strip()
    kind, _, dev = m.partition(":")
    if kind not in MODES or (dev and kind != "torch"):
        raise ImgragError(f"unknown search_device {m!r}; choose auto, cpu, faiss-gpu, torch, torch:cuda, "
                          "torch:cuda:N or torch:cpu")
    return m


def resolve_mode(option: str | None, gpu: bool | None) -> str:
    """The path asked for: ``$IMGRAG_SEARCH_DEVICE``, else the store option; ``gpu: false`` means ``cpu``."""
    env = os.environ.get(ENV, "").strip()
    if env:
        return check_mode(env)
    if gpu is False:
        return "cpu"
    return check_mode(option)


def cuda_present() -> bool:
    """True when torch sees a CUDA GPU; machines without an NVIDIA driver answer without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    if not (os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia/version")):
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken CUDA setup means "no GPU"
        return False


def torch_device(mode: str) -> str:
    """The torch device of a ``torch[:device]`` mode."""
    dev = mode.partition(":")[2]
    if dev:
        return dev
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchExact:
    """The store's vectors resident on a torch device; exact inner-product top-k with masks."""

    def __init__(self, device: str, dim: int, precision: str = "fp32") -> None:
        import torch

        if precision not in ("fp32", "fp16"):
            raise ImgragError(f"search_precision must be fp32 or fp16, got {precision!r}")
        self.device = torch.device(device)
        self.dim = dim
        self.precision = precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.chunks: list = []  # (rows, dim) tensors on the device
        self.labels = np.zeros(0, dtype=np.int64)  # label of each resident row, chunk after chunk
        self._lock = threading.Lock()

    @property
    def rows(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return self.rows * self.dim * (2 if self.precision == "fp16" else 4)

    def check_room(self, rows: int) -> None:
        """Refuse a CUDA copy of ``rows`` vectors that would take over :data:`MAX_FREE_FRACTION` of free memory."""
        import torch

        if self.device.type != "cuda":
            return
        free, _total = torch.cuda.mem_get_info(self.device)
        need = rows * self.dim * (2 if self.precision == "fp16" else 4)
        if need > MAX_FREE_FRACTION * free:
            raise ImgragError(f"{rows} vectors need {need / 2**30:.1f} GiB on {self.device}, more than half of its "
                              f"free {free / 2**30:.1f} GiB; use search_precision fp16 or an approximate factory")

    def add(self, vecs: np.ndarray, labels: np.ndarray) -> None:
        """Append rows (fills the last chunk up to :data:`CHUNK_ROWS`, then starts new ones)."""
        import torch

        vecs = np.ascontiguousarray(vecs, dtype=np.float32).reshape(-1, self.dim)
        if not vecs.flags.writeable:  # an Arrow buffer: a CPU tensor would alias memory torch may not own
            vecs = vecs.copy()
        labels = np.asarray(labels, dtype=np.int64)
        with self._lock:
            off = 0
            while off < len(vecs):
                last = self.chunks[-1] if self.chunks else None
                room = CHUNK_ROWS - last.shape[0] if last is not None else 0
                if room <= 0:
                    take = min(CHUNK_ROWS, len(vecs) - off)
                    self.chunks.append(torch.from_numpy(vecs[off:off + take]).to(self.device, self.dtype))
                else:
                    take = min(room, len(vecs) - off)
                    new = torch.from_numpy(vecs[off:off + take]).to(self.device, self.dtype)
                    self.chunks[-1] = torch.cat([last, new])
                off += take
            self.labels = np.concatenate([self.labels, labels])

    def search(self, st: "State", q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, labels) over the resident rows that are live (and ``allowed``: a bool array
        over the state's positions); missing places are score −inf, label −1, as faiss pads."""
        import torch

        nq = q.shape[0]
        pos = st.positions(self.labels)
        ok = pos >= 0
        if allowed is not None:
            ok[ok] = allowed[pos[ok]]
        mask = None if ok.all() else torch.from_numpy(ok).to(self.device)
        qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)).to(self.device, self.dtype)
        outD = np.full((nq, k), -np.inf, dtype=np.float32)
        outI = np.full((nq, k), -1, dtype=np.int64)
        block = max(1, MAX_SCORES // max(1, min(CHUNK_ROWS, self.rows)))
        with torch.inference_mode():
            for q0 in range(0, nq, block):
                qb = qt[q0:q0 + block]
                bestD = torch.full((qb.shape[0], 0), float("-inf"), device=self.device)
                bestI = torch.zeros((qb.shape[0], 0), dtype=torch.int64, device=self.device)
                start = 0
                for c in self.chunks:
                    s = (qb @ c.T).float()
                    if mask is not None:
                        s.masked_fill_(~mask[start:start + c.shape[0]], float("-inf"))
                    d, i = torch.topk(s, min(k, s.shape[1]), dim=1)
                    bestD, bestI = torch.cat([bestD, d], 1), torch.cat([bestI, i + start], 1)
                    if bestD.shape[1] > k:
                        bestD, j = torch.topk(bestD, k, dim=1)
                        bestI = torch.gather(bestI, 1, j)
                    start += c.shape[0]
                bestD, j = torch.sort(bestD, dim=1, descending=True, stable=True)
                D, rows = bestD.cpu().numpy(), torch.gather(bestI, 1, j).cpu().numpy()
                kk = D.shape[1]
                outD[q0:q0 + qb.shape[0], :kk] = D
                outI[q0:q0 + qb.shape[0], :kk] = np.where(np.isfinite(D), self.labels[rows], -1)
        return outD, outI

    def describe(self) -> str:
        return f"torch exact on {self.device} ({self.precision}, {self.rows} resident vectors)"
