"""imgrag tune: losses against hand-computed values, training on separable data, the adapter stored in an
index (round trip, fingerprint refusal, reset), the three supervision sources and their refusals."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fakes import FakeEmbedder
from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.retrieval.errors import IndexMismatchError
from imgrag.retrieval.index import Index
from imgrag.retrieval.tune import Adapter, adapter_info, load_adapter, reset_adapter, save_adapter
from imgrag.retrieval.tune.data import (NotEnoughSupervisionError, Supervision, from_captions, from_folders,
                                        from_index_labels)
from imgrag.retrieval.tune.fewshot import mix_prototypes
from imgrag.retrieval.tune.train import TuneConfig, split_items, train_adapter, tune_index

torch = pytest.importorskip("torch")


# --- losses ---------------------------------------------------------------------------------------
X2 = [[1.0, 0.0], [0.6, 0.8]]
EYE = [[1.0, 0.0], [0.0, 1.0]]


def _losses():
    from imgrag.retrieval.tune import losses

    return losses


def test_siglip_loss_matches_hand_values():
    L = _losses()
    pos = torch.eye(2, dtype=torch.bool)
    # t=1, b=0: -(log σ(1) + log σ(-0) + log σ(-0.6) + log σ(0.8)) / 2 images
    got = L.siglip_loss(torch.tensor(X2), torch.tensor(EYE), pos, torch.tensor(0.0), torch.tensor(0.0))
    assert got.item() == pytest.approx(1.2074987, abs=1e-6)
    # the paper's initialisation t' = log 10, b = -10 on orthonormal pairs: positives at logit 0 (log 2 each),
    # negatives at -10: (2 log 2 + 2 log(1 + e^-10)) / 2
    t0, b0 = L.init_params("siglip")
    assert (t0, b0) == (math.log(10), -10.0)
    got = L.siglip_loss(torch.eye(2), torch.eye(2), pos, torch.tensor(t0), torch.tensor(b0))
    assert got.item() == pytest.approx(math.log(2) + math.log1p(math.exp(-10)), abs=1e-6)


def test_clip_loss_matches_hand_values():
    L = _losses()
    pos = torch.eye(2, dtype=torch.bool)
    # rows: log(1+e^-1), log(1+e^-0.2); columns: log(1+e^-0.4), log(1+e^-0.8); mean of the two directions
    got = L.clip_loss(torch.tensor(X2), torch.tensor(EYE), pos, torch.tensor(0.0))
    assert got.item() == pytest.approx(0.4488791, abs=1e-6)
    # one text with two positive images: its target is uniform over them
    # image→text (0.3132617 + 0.7981389 + 0.3132617)/3; text→image (0.9120697 + 0.7823518)/2
    x3 = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    pos3 = torch.tensor([[1, 0], [1, 0], [0, 1]], dtype=torch.bool)
    assert L.clip_loss(x3, torch.tensor(EYE), pos3, torch.tensor(0.0)).item() == pytest.approx(0.6610485, abs=1e-6)
    with pytest.raises(ValueError):
        L.init_params("triplet")


# --- training on synthetic data -------------------------------------------------------------------
def _rotated_classes(n_classes=6, per_class=20, d=16, seed=0) -> Supervision:
    """Images of class c cluster around R·t_c (R a fixed rotation): zero-shot is poor, a linear map fixes it."""
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((n_classes, d)).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    keys = np.repeat(np.arange(n_classes), per_class)
    x = t[keys] @ q.T.astype(np.float32) + 0.15 * rng.standard_normal((len(keys), d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    names = [f"class {c}" for c in range(n_classes)]
    return Supervision("synthetic", "classes", [f"/img/{i}.png" for i in range(len(keys))], x.astype(np.float32),
                       keys, names, t, np.arange(n_classes), names)


@pytest.mark.parametrize("loss", ["siglip", "clip"])
def test_training_on_separable_set_improves_validation_accuracy(loss):
    sup = _rotated_classes()
    res = train_adapter(sup, TuneConfig(loss=loss, lr=1e-2, max_epochs=200, batch_size=64))
    assert res.val_items == 24 and res.train_items == 96
    assert res.before["i2t_top1"] < 0.6
    assert res.after["i2t_top1"] >= 0.9 and res.after["i2t_top1"] > res.before["i2t_top1"] + 0.3
    assert res.adapter.image_w is None and res.adapter.text_w.shape == (16, 16)
    assert res.history[res.best_epoch - 1][1] <= res.history[0][1]


def test_split_is_seeded_stratified_and_keeps_a_training_image_per_class():
    keys = np.array([0] * 10 + [1] * 5 + [2] * 1)
    tr, va = split_items(keys, 0.2, seed=3)
    tr2, va2 = split_items(keys, 0.2, seed=3)
    assert (va == va2).all() and (tr == tr2).all() and set(tr) | set(va) == set(range(16))
    assert list(np.bincount(keys[va], minlength=3)) == [2, 1, 0]
    _, va_cap = split_items(np.arange(20), 0.2, seed=0)  # one image per key (captions): a random 20 %
    assert len(va_cap) == 4


def test_fewshot_mixing_moves_prototypes_toward_examples():
    text = np.eye(3, dtype=np.float32)
    ex = np.array([[0, 1, 0], [0, 1, 0]], np.float32)  # two examples of class 0 that look like class 1
    w = mix_prototypes(text, ex, [0, 0], alpha=0.5)
    assert np.allclose(w[0], [1 / math.sqrt(2), 1 / math.sqrt(2), 0], atol=1e-6)
    assert np.allclose(w[1:], text[1:])  # classes without examples keep their text prototype
    assert np.allclose(mix_prototypes(text, ex, [0, 0], alpha=0.0), text)


# --- an index with the fake embedder ----------------------------------------------------------------
COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}


def _tree(root, n=4):
    for name, rgb in COLOURS.items():
        d = root / name
        d.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (24, 24), tuple(max(0, c - 15 * i) for c in rgb)).save(d / f"{name}{i}.png")
    return root


@pytest.fixture
def colour_index(tmp_path):
    tree = _tree(tmp_path / "tree")
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store="lancedb")
    build_index(idx, [tree / "red", tree / "green"], IndexOptions(batch_size=4, workers=0))  # blue: not indexed
    return Index.open(tmp_path / "idx", embedder=FakeEmbedder()), tree


def test_folders_source_uses_stored_vectors_and_embeds_the_rest(colour_index):
    idx, tree = colour_index
    emb = idx.embedder
    before = emb.images_embedded
    sup = from_folders(idx, tree)
    assert sup.kind == "classes" and sup.key_names == ["blue", "green", "red"] and len(sup.item_ids) == 12
    assert sup.embedded == 4 and emb.images_embedded - before == 4  # only the 4 blue images
    assert sup.texts[:2] == ["blue", "itap of a blue."] and len(sup.texts) == 3 * 8
    assert sup.digest() == from_folders(idx, tree).digest()


def test_captions_and_index_labels_sources(colour_index, tmp_path):
    idx, tree = colour_index
    tsv = tree / "captions.tsv"
    lines = [f"{c}/{c}{i}.png\ta {c} square" for c in COLOURS for i in range(3)]
    tsv.write_text("# comment\n" + "\n".join(lines) + "\nred/red0.png\tsomething crimson\n")
    sup = from_captions(idx, tsv)
    assert sup.kind == "captions" and len(sup.item_ids) == 9 and len(sup.texts) == 10 and sup.embedded == 3
    assert sorted(sup.text_keys.tolist()).count(sup.key_names.index("red/red0.png")) == 2
    # relative paths not under the TSV's folder are matched against the index's ids by their end
    elsewhere = tmp_path / "caps.tsv"
    elsewhere.write_text("\n".join(f"{c}/{c}{i}.png\t{c}" for c in ("red", "green") for i in range(4)) + "\n")
    assert len(from_captions(idx, elsewhere).item_ids) == 8

    with pytest.raises(NotEnoughSupervisionError, match="no labels in index"):
        from_index_labels(idx)
    ids = [r["id"] for b in idx.store.scan(columns=["id"]) for r in b.to_pylist()]
    labels = ["warm" if "/red/" in i else "cool" for i in ids]
    idx.store.update_columns(ids, {"label": labels, "label_score": [0.9] * len(ids)})
    sup = from_index_labels(idx)
    assert sup.key_names == ["cool", "warm"] and len(sup.item_ids) == 8


def test_too_little_supervision_is_refused(colour_index, tmp_path):
    idx, tree = colour_index
    one = tmp_path / "one"
    _tree(one, n=4)
    for c in ("green", "blue"):
        for f in (one / c).iterdir():
            f.unlink()
        (one / c).rmdir()
    with pytest.raises(NotEnoughSupervisionError, match="at least two class folders"):
        from_folders(idx, one)
    small = tmp_path / "small"
    _tree(small, n=2)  # 6 images < 8
    with pytest.raises(NotEnoughSupervisionError, match="tune needs at least two classes"):
        from_folders(idx, small)
    tsv = tree / "few.tsv"
    tsv.write_text("red/red0.png\tred\nred/red1.png\tred\nmissing.png\tnothing\n")
    with pytest.raises(NotEnoughSupervisionError, match=r"2 captioned images usable \(e.g\. missing.png"):
        from_captions(idx, tsv)


def test_adapter_round_trip_reset_and_fingerprint_refusal(colour_index, tmp_path):
    idx, tree = colour_index
    assert load_adapter(idx) is None and reset_adapter(idx) is False
    res = tune_index(idx, from_folders(idx, tree), TuneConfig(max_epochs=30))
    meta = adapter_info(idx)
    assert meta["model"] == "fake-rgb" and meta["model_fingerprint"] == idx.manifest.fingerprint
    assert meta["loss"] == "siglip" and len(meta["data_digest"]) == 64 and meta["dim"] == 8
    assert meta["validation"]["before"] == res.before and meta["validation"]["after"] == res.after
    loaded = load_adapter(idx)
    q = FakeEmbedder().embed_texts(["red", "a red square"])
    assert np.allclose(loaded.apply_text(q), res.adapter.apply_text(q), atol=1e-7)
    assert np.allclose(np.linalg.norm(loaded.apply_text(q), axis=1), 1.0, atol=1e-6)
    assert loaded.apply_image(q) is not None and np.allclose(loaded.apply_image(q), q)  # text side only
    assert not [p.name for p in idx.root.iterdir() if ".tmp-" in p.name]  # atomic write left no temp file

    other = Index.create_or_open(tmp_path / "other", FakeEmbedder("fake-other"), store="lancedb")
    save_adapter(other, loaded)  # an adapter trained for fake-rgb, now in a fake-other index
    with pytest.raises(IndexMismatchError, match="trained for model 'fake-rgb'.*--reset"):
        load_adapter(other)
    assert reset_adapter(idx) is True and load_adapter(idx) is None


def test_identity_adapter_changes_nothing_and_corrupt_file_is_reported(colour_index):
    idx, _ = colour_index
    v = FakeEmbedder().embed_texts(["blue"])
    a = Adapter(np.zeros((8, 8), np.float32))
    assert np.allclose(a.apply_text(v), v, atol=1e-7)
    (idx.root / "adapter.npz").write_bytes(b"not a zip")
    from imgrag.retrieval.errors import CorruptIndexError

    with pytest.raises(CorruptIndexError, match="--reset"):
        load_adapter(idx)


def test_loading_and_applying_an_adapter_imports_no_torch(colour_index):
    idx, _ = colour_index
    save_adapter(idx, Adapter(np.eye(8, dtype=np.float32) * 0.1, meta={
        "model": idx.manifest.model, "model_fingerprint": idx.manifest.fingerprint, "dim": 8}))
    code = ("import sys, json, numpy as np; from imgrag.retrieval.index import Index; "
            "from imgrag.retrieval.tune import load_adapter; "
            f"a = load_adapter(Index.open({str(idx.root)!r})); v = a.apply_text(np.ones((1, 8), np.float32)); "
            "print(json.dumps([round(float(np.linalg.norm(v)), 4), "
            "sorted(m for m in ('torch', 'transformers') if m in sys.modules)]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [1.0, []]


def test_search_uses_the_adapter_unless_switched_off(colour_index):
    from imgrag.retrieval.queries.search import search
    from imgrag.retrieval.tune import set_adapter_enabled

    idx, _ = colour_index
    assert "/red/" in search(idx, "red", k=1)[0].id
    # x + W x = -x: the adapter turns the query around, so "red" now finds the least red image first
    save_adapter(idx, Adapter(-2 * np.eye(8, dtype=np.float32), meta={
        "model": idx.manifest.model, "model_fingerprint": idx.manifest.fingerprint, "dim": 8}))
    assert "/red/" not in search(idx, "red", k=1)[0].id
    assert "/red/" in search(idx, "red", k=1, use_adapter=False)[0].id
    set_adapter_enabled(idx, False)
    assert "/red/" in search(idx, "red", k=1)[0].id
    set_adapter_enabled(idx, True)
    assert "/red/" not in search(idx, "red", k=1)[0].id
    reset_adapter(idx)
    assert "/red/" in search(idx, "red", k=1)[0].id


def test_cli_tune_search_no_adapter_reset_and_lock(tmp_path, tiny_model_configs, capsys):
    from imgrag.app.cli import main
    from imgrag.indexer.lease import writer_lock

    tree = _tree(tmp_path / "tree")
    idx = tmp_path / "idx"
    assert main(["index", str(tree), "--index", str(idx), "--model", "imgrag-tiny-clip", "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["tune", "--index", str(idx), "--labels-from-index"]) == 2
    assert "no labels in index" in capsys.readouterr().err
    assert main(["tune", "--index", str(idx), "--folders", str(tree), "--loss", "clip", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["loss"] == "clip" and out["images"] == 12 and out["embedded"] == 0 and out["val_items"] == 3
    assert set(out["before"]) == {"i2t_top1", "t2i_r1"} and (idx / "adapter.npz").is_file()
    assert adapter_info(Index.open(idx))["config"]["loss"] == "clip"
    for extra in ([], ["--no-adapter"]):
        assert main(["search", "red", "--index", str(idx), "--mode", "vector", "-k", "3", "--json", *extra]) == 0
        assert len(json.loads(capsys.readouterr().out)) == 3
    assert main(["classify", "--labels", "red,green,blue", "--index", str(idx), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 12
    with writer_lock(idx):  # an indexer (or another tune) is writing: tune is refused, the adapter untouched
        assert main(["tune", "--index", str(idx), "--reset"]) == 3
    assert "index" in capsys.readouterr().err and (idx / "adapter.npz").is_file()
    assert main(["tune", "--index", str(idx), "--reset"]) == 0
    assert "adapter removed" in capsys.readouterr().out and not (idx / "adapter.npz").exists()
