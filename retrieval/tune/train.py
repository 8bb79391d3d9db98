"""Train an adapter on stored vectors (towers frozen: no image is re-embedded) and store it in the index.

A held-out validation split (by image, seeded; stratified by class when classes have several images)
drives early stopping on the validation loss; the best epoch's weights are kept. Weight decay pulls W
toward zero, i.e. the adapter toward the identity map (the untuned model). The before/after figures are
computed with the NumPy adapter (the exact code path queries use), on the validation split only.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.tune.adapter import Adapter, _l2, save_adapter

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.retrieval.index import Index
    from imgrag.retrieval.tune.data import Supervision

SIDES = ("text", "both")
MAX_TEXTS_PER_STEP = 4096  # beyond this, a step only uses the texts of the images in its batch


@dataclass
class TuneConfig:
    loss: str = "siglip"  # "siglip" | "clip"
    sides: str = "text"  # "text" | "both" (image side too; see adapter.py for why text is the default)
    val_fraction: float = 0.2
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.1
    max_epochs: int = 300
    patience: int = 25
    batch_size: int = 512


@dataclass
class TuneResult:
    adapter: Adapter
    before: dict[str, float]
    after: dict[str, float]
    epochs: int
    best_epoch: int
    train_items: int
    val_items: int
    history: list[tuple[float, float]] = field(default_factory=list)  # (train loss, val loss) per epoch

    def to_json(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "epochs": self.epochs, "best_epoch": self.best_epoch,
                "train_items": self.train_items, "val_items": self.val_items}


def split_items(keys: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) item positions. Per class when classes hold several images (each keeps at
    least one training image); otherwise a plain random split of the items."""
    rng = np.random.default_rng(seed)
    keys = np.asarray(keys)
    _, counts = np.unique(keys, return_counts=True)
    val: list[int] = []
    if counts.max() > 1:
        for k in np.unique(keys):
            members = rng.permutation(np.flatnonzero(keys == k))
            n_val = min(len(members) - 1, int(math.floor(val_fraction * len(members) + 0.5)))
            val += members[:n_val].tolist()
    else:
        perm = rng.permutation(len(keys))
        val = perm[: max(1, int(round(val_fraction * len(keys))))].tolist()
    val_set = set(val)
    if not val_set:
        raise ImgragError("no validation images could be held out; give more images per class")
    train = np.array([i for i in range(len(keys)) if i not in val_set])
    return train, np.array(sorted(val_set))


def evaluate(sup: "Supervision", items: np.ndarray, adapter: Adapter | None) -> dict[str, float]:
    """On the given images: ``i2t_top1`` (each image's best key among all keys, a key's prototype being
    the mean of its texts) and ``t2i_r1`` (each text of those images finds one of them first)."""
    ident = Adapter(None)
    a = adapter or ident
    iv = a.apply_image(sup.image_vectors[items])
    tv = a.apply_text(sup.text_vectors)
    n_keys = len(sup.key_names)
    protos = np.zeros((n_keys, tv.shape[1]), np.float32)
    np.add.at(protos, sup.text_keys, tv)
    has = np.linalg.norm(protos, axis=1) > 0
    protos = _l2(protos)
    sims = iv @ protos.T
    sims[:, ~has] = -np.inf
    ikeys = sup.item_keys[items]
    i2t = float(np.mean(sims.argmax(axis=1) == ikeys))
    tsel = np.isin(sup.text_keys, ikeys)
    best = (tv[tsel] @ iv.T).argmax(axis=1)
    t2i = float(np.mean(ikeys[best] == sup.text_keys[tsel])) if tsel.any() else float("nan")
    return {"i2t_top1": i2t, "t2i_r1": t2i}


def train_adapter(sup: "Supervision", config: TuneConfig | None = None) -> TuneResult:
    """Fit the adapter on the training split; early stopping on the validation loss."""
    import torch

    from imgrag.retrieval.tune.losses import LOSSES, clip_loss, init_params, siglip_loss

    cfg = config or TuneConfig()
    if cfg.loss not in LOSSES:
        raise ImgragError(f"unknown loss {cfg.loss!r}; use one of {', '.join(LOSSES)}")
    if cfg.sides not in SIDES:
        raise ImgragError(f"unknown adapter side {cfg.sides!r}; use one of {', '.join(SIDES)}")
    train, val = split_items(sup.item_keys, cfg.val_fraction, cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    d = sup.image_vectors.shape[1]
    X = torch.from_numpy(sup.image_vectors.astype(np.float32))
    Y = torch.from_numpy(sup.text_vectors.astype(np.float32))
    ik = torch.from_numpy(sup.item_keys.astype(np.int64))
    tk = torch.from_numpy(sup.text_keys.astype(np.int64))
    w_t = torch.zeros(d, d, requires_grad=True)
    w_i = torch.zeros(d, d, requires_grad=True) if cfg.sides == "both" else None
    t0, b0 = init_params(cfg.loss)
    t_prime = torch.tensor(t0, requires_grad=True)
    bias = torch.tensor(b0 if b0 is not None else 0.0, requires_grad=b0 is not None)
    decayed = [w for w in (w_t, w_i) if w is not None]
    scalars = [t_prime] + ([bias] if b0 is not None else [])
    opt = torch.optim.AdamW([{"params": decayed, "weight_decay": cfg.weight_decay},
                             {"params": scalars, "weight_decay": 0.0}], lr=cfg.lr)

    def fwd(w, v):
        return torch.nn.functional.normalize(v + v @ w.T, dim=-1) if w is not None else v

    def batch_loss(items: np.ndarray) -> "torch.Tensor":
        idx = torch.from_numpy(items)
        keys = ik[idx]
        tsel = torch.arange(len(tk)) if len(tk) <= MAX_TEXTS_PER_STEP else torch.nonzero(torch.isin(tk, keys))[:, 0]
        x, y = fwd(w_i, X[idx]), fwd(w_t, Y[tsel])
        pos = keys[:, None] == tk[tsel][None, :]
        if cfg.loss == "siglip":
            return siglip_loss(x, y, pos, t_prime, bias)
        return clip_loss(x, y, pos, t_prime)

    def val_loss() -> float:
        with torch.no_grad():
            return float(np.mean([batch_loss(val[i : i + cfg.batch_size]).item()
                                  for i in range(0, len(val), cfg.batch_size)]))

    def snapshot() -> tuple:
        return tuple(p.detach().clone() if p is not None else None for p in (w_t, w_i, t_prime, bias))

    best, best_epoch, best_state = val_loss(), 0, snapshot()
    history: list[tuple[float, float]] = []
    epoch = 0
    for epoch in range(1, cfg.max_epochs + 1):
        perm = rng.permutation(train)
        losses = []
        for i in range(0, len(perm), cfg.batch_size):
            opt.zero_grad()
            loss = batch_loss(perm[i : i + cfg.batch_size])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        vl = val_loss()
        history.append((float(np.mean(losses)), vl))
        if vl < best - 1e-6:
            best, best_epoch, best_state = vl, epoch, snapshot()
        elif epoch - best_epoch >= cfg.patience:
            break
    wt, wi, tp, bb = best_state
    adapter = Adapter(wt.numpy().copy(), wi.numpy().copy() if wi is not None else None,
                      {"loss": cfg.loss, "sides": cfg.sides, "logit_scale": float(math.exp(tp.item())),
                       "logit_bias": float(bb.item()) if b0 is not None else None, "dim": d})
    before, after = evaluate(sup, val, None), evaluate(sup, val, adapter)
    return TuneResult(adapter, before, after, epoch, best_epoch, len(train), len(val), history)


def tune_index(index: "Index", sup: "Supervision", config: TuneConfig | None = None,
               save: bool = True) -> TuneResult:
    """Train on ``sup`` and store the adapter in ``index`` with its fingerprint. With ``save`` the index's
    writer lock is taken first and held to the end: a concurrent writer fails before training, not after."""
    if save:
        with index.writing():
            res = tune_index(index, sup, config, save=False)
            save_adapter(index, res.adapter)
            return res
    cfg = config or TuneConfig()
    res = train_adapter(sup, cfg)
    man = index.manifest
    res.adapter.meta.update({
        "model": man.model, "model_fingerprint": man.fingerprint, "dim": man.dim,
        "data_digest": sup.digest(), "supervision": sup.summary(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": asdict(cfg), "validation": res.to_json()})
    return res
