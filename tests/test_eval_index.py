"""`imgrag eval … --index DIR`: evaluates with the index's model and its tuned adapter; `--no-adapter` compares."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

RGB = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


@pytest.fixture
def tuned(tmp_path, tiny_model_configs):
    """An index of noisy colour squares whose adapter maps each class text onto its images' centroid."""
    from imgrag.app.cli import main
    from imgrag.retrieval.index import Index
    from imgrag.retrieval.queries.classify import class_vectors
    from imgrag.retrieval.tune import Adapter, save_adapter

    coll = tmp_path / "coll"
    rng = np.random.default_rng(0)
    for cls, rgb in RGB.items():
        (coll / cls).mkdir(parents=True)
        for i in range(5):
            px = np.clip(np.asarray(rgb) + rng.normal(0, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(coll / cls / f"{i}.png")
    (coll / "captions.tsv").write_text("".join(f"{c}/{i}.png\t{c}\n" for c in RGB for i in range(5)))
    idx = tmp_path / "idx"
    assert main(["index", str(coll), "--index", str(idx), "--model", "imgrag-tiny-clip", "--workers", "0"]) == 0
    index = Index.open(idx)
    t = index.store.get([str(coll / c / f"{i}.png") for c in RGB for i in range(5)], columns=["vector"])
    vecs = np.asarray(t["vector"].to_pylist(), np.float32).reshape(3, 5, -1)
    mu = vecs.mean(axis=1)
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    T = class_vectors(index.embedder, list(RGB), ["{}"])
    # W T_c = mu_c - T_c for the three class texts (least squares: exact, as 3 < d)
    W = ((mu - T).T @ np.linalg.pinv(T.T)).astype(np.float32)
    man = index.manifest
    save_adapter(index, Adapter(W, meta={"model": man.model, "model_fingerprint": man.fingerprint, "dim": man.dim}))
    return coll, idx, index


def _run(main, capsys, *argv):
    capsys.readouterr()
    code = main(["eval", *argv])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 and "--json" in argv else out.out + out.err)


def test_eval_zeroshot_and_retrieval_with_the_index_adapter(tuned, capsys):
    from imgrag.app.cli import main
    from imgrag.retrieval.queries.evaluate import eval_retrieval, eval_zeroshot
    from imgrag.retrieval.tune import load_adapter

    coll, idx, index = tuned
    adapter = load_adapter(index)
    with_a = eval_zeroshot(index.embedder, coll, ["none"], calibration="none", adapter=adapter).reports[0]
    without = eval_zeroshot(index.embedder, coll, ["none"], calibration="none").reports[0]
    # the text→centroid map changes the predictions (a random tiny model: how much it helps is not the point)
    assert (with_a.per_class, with_a.confusions) != (without.per_class, without.confusions)

    common = ["zeroshot", str(coll), "--templates", "none", "--calibration", "none", "--json", "--index", str(idx)]
    code, r = _run(main, capsys, *common)
    assert code == 0 and r["model"] == "imgrag-tiny-clip" and r["adapter"] is True and r["index"] == str(idx)
    assert r["results"][0]["per_class"] == with_a.per_class and r["results"][0]["top1"] == pytest.approx(with_a.top1)
    code, r = _run(main, capsys, *common, "--no-adapter")
    assert code == 0 and r["adapter"] is False and r["results"][0]["per_class"] == without.per_class
    code, text = _run(main, capsys, "zeroshot", str(coll), "--templates", "none", "--index", str(idx))
    assert code == 0 and f"model imgrag-tiny-clip (index {idx}, tuned adapter): 15 images" in text

    rt = ["retrieval", "--images", str(coll), "--captions", str(coll / "captions.tsv"), "--json", "--index", str(idx)]
    expect = eval_retrieval(index.embedder, coll, coll / "captions.tsv", adapter=adapter).text_to_image
    code, r = _run(main, capsys, *rt)
    assert code == 0 and r["adapter"] is True
    assert r["text_to_image"] == pytest.approx({f"R@{k}": v for k, v in expect.items()})


def test_eval_index_refusals(tuned, capsys):
    from imgrag.app.cli import main

    coll, idx, _ = tuned
    code, err = _run(main, capsys, "zeroshot", str(coll), "--index", str(idx), "--model", "lite")
    assert code == 2 and "built with model 'imgrag-tiny-clip', not 'lite'; drop --model" in err
    code, err = _run(main, capsys, "zeroshot", str(coll), "--model", "imgrag-tiny-clip", "--no-adapter")
    assert code == 2 and "--no-adapter needs --index DIR" in err
