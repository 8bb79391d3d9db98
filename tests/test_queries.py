"""Pure query logic: query parsing and arithmetic, zero-shot weights, probabilities, evaluation maths."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgrag.retrieval.errors import BadQueryError
from imgrag.retrieval.queries.classify import (ZeroShotClassifier, class_vectors, load_templates, parse_labels,
                                               scores_to_probs)
from imgrag.retrieval.queries.evaluate import eval_retrieval, eval_zeroshot, folder_dataset, recall_at_k
from imgrag.retrieval.queries.search import Term, parse_query

from fakes import FakeEmbedder


def test_parse_query_terms_weights_and_images(tmp_path):
    img = tmp_path / "ref.jpg"
    Image.new("RGB", (8, 8)).save(img)
    t = parse_query(f'beach + 0.5*image:{img} - "people"')
    assert t == [Term("text", "beach", 1.0), Term("image", str(img), 0.5), Term("text", "people", -1.0)]
    assert parse_query("a t-shirt - red") == [Term("text", "a t-shirt", 1.0), Term("text", "red", -1.0)]
    assert parse_query(str(img)) == [Term("image", str(img), 1.0)]
    assert parse_query("2*cat + .5*dog") == [Term("text", "cat", 2.0), Term("text", "dog", 0.5)]
    for bad, msg in [("", "empty"), ("cat + ", "missing term"), ("- cat", "positive"),
                     ("image:/nonexistent.jpg", "not found")]:
        with pytest.raises(BadQueryError, match=msg):
            parse_query(bad)


def test_class_vectors_are_normalised_template_means():
    emb = FakeEmbedder()
    templates = ["a photo of {}.", "{}", "art of the {}."]
    w = class_vectors(emb, ["red", "blue"], templates)
    for i, lab in enumerate(["red", "blue"]):
        e = emb.embed_texts([t.format(lab) for t in templates])
        m = e.mean(axis=0)
        assert np.allclose(w[i], m / np.linalg.norm(m), atol=1e-6)
    assert np.allclose(np.linalg.norm(w, axis=1), 1.0)


def test_probabilities_softmax_sigmoid_and_thresholds():
    sims = np.array([[0.3, 0.1, 0.2]], dtype=np.float32)
    p = scores_to_probs(sims, 100.0, None)
    e = np.exp(100 * (sims - sims.max()))
    assert np.allclose(p, e / e.sum()) and abs(p.sum() - 1) < 1e-6
    ps = scores_to_probs(sims, 10.0, -2.0)
    assert np.allclose(ps, 1 / (1 + np.exp(-(10 * sims - 2.0))))
    emb = FakeEmbedder()
    clf = ZeroShotClassifier(emb, "red,green,blue", ["{}"], thresholds={"red": 0.99})
    red = emb.embed_texts(["red"])
    pred = clf.predict_vectors(red, top_n=2)[0]
    assert pred.top[0][0] == "red" and len(pred.top) == 2
    assert pred.label is None if pred.score < 0.99 else pred.label == "red"
    clf2 = ZeroShotClassifier(emb, ["red", "green", "blue"], ["{}"])
    assert clf2.predict_vectors(red)[0].label == "red"
    with pytest.raises(BadQueryError, match="unknown labels"):
        ZeroShotClassifier(emb, "red,green", ["{}"], thresholds={"pink": 0.5})


def test_templates_and_labels_validation(tmp_path):
    assert len(load_templates("openai")) == 80 and len(load_templates("simple")) == 7
    assert load_templates(None) == load_templates("simple")
    f = tmp_path / "t.txt"
    f.write_text("# comment\na photo of {}\n\n{} in the wild\n")
    assert load_templates(str(f)) == ["a photo of {}", "{} in the wild"]
    f.write_text("no placeholder\n")
    with pytest.raises(BadQueryError, match="exactly once"):
        load_templates(str(f))
    with pytest.raises(BadQueryError, match="not found"):
        load_templates("nonexistent-set")
    assert parse_labels("cat, dog ,,car") == ["cat", "dog", "car"]
    assert parse_labels("cat\ndog, brown\n") == ["cat", "dog, brown"]
    with pytest.raises(BadQueryError, match="duplicate"):
        parse_labels("cat,cat")


def test_recall_at_k_known_answers():
    sims = np.array([[0.9, 0.1, 0.0], [0.2, 0.1, 0.8], [0.5, 0.6, 0.4]])
    r = recall_at_k(sims, [{0}, {1}, {2}], ks=(1, 2, 3))
    assert r == {1: 1 / 3, 2: 1 / 3, 3: 1.0}
    assert recall_at_k(sims, [{0}, {2}, {1}], ks=(1,)) == {1: 1.0}


def _colour_tree(root, n=3):
    for name, rgb in [("red", (230, 20, 20)), ("green", (20, 230, 20)), ("blue", (20, 20, 230))]:
        d = root / "colours" / name
        d.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (20, 20), tuple(max(0, c - 10 * i) for c in rgb)).save(d / f"{i}.png")


def test_eval_zeroshot_and_retrieval_on_generated_data(tmp_path):
    _colour_tree(tmp_path)
    classes, paths, targets = folder_dataset(tmp_path, depth=2)
    assert classes == ["colours/blue", "colours/green", "colours/red"] and len(paths) == 9
    run = eval_zeroshot(FakeEmbedder(), tmp_path / "colours", ["none"], depth=1)
    n, reps = run.images, run.reports
    assert n == 9 and reps[0].top1 == 1.0 and reps[0].per_class == {"blue": 1.0, "green": 1.0, "red": 1.0}
    assert reps[0].calibration == "zscore" and reps[0].top1_raw == 1.0 and reps[0].top5_raw == 1.0
    raw = eval_zeroshot(FakeEmbedder(), tmp_path / "colours", ["none"], depth=1, calibration="none").reports[0]
    assert raw.calibration == "none" and raw.top1 == raw.top1_raw == 1.0
    caps = tmp_path / "caps.tsv"
    caps.write_text("red/0.png\tred\ngreen/0.png\tgreen\nblue/0.png\tblue\nblue/0.png\tsomething else\n")
    r = eval_retrieval(FakeEmbedder(), tmp_path / "colours", caps)
    assert r.images == 3 and r.captions == 4
    assert r.image_to_text[1] == 1.0 and r.text_to_image[5] == 1.0 and 0.5 <= r.text_to_image[1] <= 1.0


# --- calibrated classify over a store -----------------------------------------------------------------------
def _hub_store(tmp_path, kind: str = "faiss"):
    """A store of 5 classes × 30 vectors where label 0 is a hub (see tests/test_calibration.py)."""
    import contextlib
    from types import SimpleNamespace

    from imgrag.retrieval.stores import open_store
    from imgrag.retrieval.stores.base import make_rows

    rng = np.random.default_rng(0)
    c, d, n_per = 5, 8, 30
    basis = np.linalg.qr(rng.normal(size=(d, c + 1)))[0].T
    labels, common = basis[:c].copy(), basis[c]
    labels[0] += 3.0 * common
    labels /= np.linalg.norm(labels, axis=1, keepdims=True)
    y = np.repeat(np.arange(c), n_per)
    x = basis[y] + 1.5 * common + rng.normal(0, 0.1, size=(len(y), d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    store = open_store(kind, tmp_path / kind, d)
    store.upsert(make_rows([{"id": f"/img/{i:03d}.png", "path": f"/img/{i:03d}.png"} for i in range(len(y))], x))
    # writing(): the writer lock classify_index(write=True) takes on a real Index
    return SimpleNamespace(store=store, root=tmp_path, writing=contextlib.nullcontext), labels, x, y


def test_classify_index_is_calibrated_on_the_collection(tmp_path):
    from imgrag.retrieval.queries.classify import classify_index, reference_vectors

    index, w, x, y = _hub_store(tmp_path)
    names = ["hub", "b", "c", "d", "e"]

    def run(calibration):
        clf = ZeroShotClassifier(FakeEmbedder(), names, ["{}"], calibration=calibration)
        clf.weights = w.astype(np.float32)  # the synthetic label vectors
        rows = list(classify_index(index, clf, write=calibration != "none", batch_size=32))
        got = {i: names.index(p.label) for i, _path, p in rows}
        return clf, np.array([got[f"/img/{i:03d}.png"] for i in range(len(y))])

    _, raw = run("none")
    assert (raw == 0).mean() > 0.9  # the hub label takes nearly everything
    clf, cal = run("auto")
    assert (cal == y).mean() > 0.95 and np.bincount(cal).max() <= 35
    stored = index.store.get(["/img/000.png", "/img/149.png"], columns=["id", "label"]).to_pylist()
    assert {r["id"]: r["label"] for r in stored} == {"/img/000.png": "hub", "/img/149.png": "e"}

    # single vectors: calibrated against a random sample of the index
    ref = reference_vectors(index, n=40, seed=1)
    assert ref.shape == (40, 8) and len({r.tobytes() for r in ref}) == 40
    assert {r.tobytes() for r in ref} <= {r.tobytes() for r in x}
    assert reference_vectors(index, n=1000).shape == (150, 8)  # small index: all of it
    c = clf.calibration_for(index)
    assert c is not None and c.n_reference == min(150, 512)
    one = [names.index(clf.predict_vectors(v[None], calibration=c)[0].label) for v in x]
    assert (np.array(one) == y).mean() > 0.95
    assert ZeroShotClassifier(FakeEmbedder(), names, ["{}"], calibration="none").calibration_for(index) is None
    with pytest.raises(BadQueryError, match="unknown calibration"):
        ZeroShotClassifier(FakeEmbedder(), names, ["{}"], calibration="bogus")
