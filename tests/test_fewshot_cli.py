"""`imgrag classify --examples ROOT`: few-shot class prototypes (Tip-Adapter style) from a folder per class,
matched to --labels or used as the labels; the CLI's probabilities equal the library's mix."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgrag.retrieval.errors import BadQueryError
from imgrag.retrieval.tune.fewshot import DEFAULT_ALPHA, match_example_classes

RGB = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def test_example_folders_are_matched_to_labels():
    assert match_example_classes(["cat", "dog"], None) == (["cat", "dog"], [0, 1])
    # case and spacing ignored; a label without a folder keeps its text prototype (no index)
    assert match_example_classes(["Dog", "sea  lion"], ["cat", "dog", "sea lion"]) == (["cat", "dog", "sea lion"], [1, 2])
    with pytest.raises(BadQueryError, match="'purple' names none of the labels"):
        match_example_classes(["red", "purple"], ["red", "green"])


@pytest.fixture
def colour_index(tmp_path, tiny_model_configs):
    from imgrag.app.cli import main

    coll = tmp_path / "coll"
    rng = np.random.default_rng(0)
    for cls, rgb in RGB.items():
        (coll / cls).mkdir(parents=True)
        for i in range(5):
            px = np.clip(np.asarray(rgb) + rng.normal(0, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(coll / cls / f"{i}.png")
    idx = tmp_path / "idx"
    assert main(["index", str(coll), "--index", str(idx), "--model", "imgrag-tiny-clip", "--workers", "0"]) == 0
    return coll, idx


def _classify(main, capsys, idx, *extra):
    capsys.readouterr()
    code = main(["classify", "--templates", "none", "--top", "3", "--json", "--calibration", "none",
                 "--index", str(idx), *extra])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err)


def test_cli_examples_mix_prototypes(colour_index, tmp_path, capsys):
    from imgrag.app.cli import main
    from imgrag.retrieval.index import Index
    from imgrag.retrieval.queries.classify import ZeroShotClassifier
    from imgrag.retrieval.tune.fewshot import mix_prototypes

    coll, idx = colour_index
    ex = tmp_path / "ex"
    (ex / "Red").mkdir(parents=True)  # folder names match labels ignoring case
    (ex / "green").mkdir()
    shutil.copy(coll / "red" / "0.png", ex / "Red" / "a.png")  # a copy: not in the index, embedded now
    Image.new("RGB", (32, 32), (250, 0, 0)).save(ex / "Red" / "b.png")
    shutil.copy(coll / "green" / "1.png", ex / "green" / "a.png")

    code, rows = _classify(main, capsys, idx, "--labels", "red,green,blue", "--examples", str(ex))
    assert code == 0 and len(rows) == 15
    got = {r["path"]: dict(r["top"]) for r in rows}

    index = Index.open(idx)
    t = index.store.get(list(got), columns=["path", "vector"])
    paths, vecs = t["path"].to_pylist(), np.asarray(t["vector"].to_pylist(), np.float32)
    clf = ZeroShotClassifier(index.embedder, "red,green,blue", "none", calibration="none")
    raw = clf.probabilities(vecs)
    ex_vecs = index.embedder.embed_images([Image.open(p).convert("RGB") for p in
                                           (ex / "Red" / "a.png", ex / "Red" / "b.png", ex / "green" / "a.png")])
    clf.weights = mix_prototypes(clf.weights, ex_vecs, [0, 0, 1], DEFAULT_ALPHA)
    expect = clf.probabilities(vecs)
    assert not np.allclose(expect, raw, atol=1e-3)  # the examples change the scores here
    for p, row in zip(paths, expect):
        assert np.allclose([got[p][lab] for lab in ("red", "green", "blue")], row, atol=1e-4), p

    # calibration auto is off with examples (measured: it lowers few-shot top-1): the default equals none
    capsys.readouterr()
    assert main(["classify", "--templates", "none", "--top", "3", "--json", "--index", str(idx),
                 "--labels", "red,green,blue", "--examples", str(ex)]) == 0
    assert {r["path"]: dict(r["top"]) for r in json.loads(capsys.readouterr().out)} == got
    from imgrag.retrieval.tune.adapter import tuned_calibration

    assert tuned_calibration("auto", True) == "none" and tuned_calibration("zscore", True) == "zscore"
    assert tuned_calibration("auto", False) == "auto"

    # without --labels the folder names are the labels (blue is then not a label at all)
    code, rows = _classify(main, capsys, idx, "--examples", str(ex))
    assert code == 0 and all(set(dict(r["top"])) == {"Red", "green"} for r in rows)
    # with calibration on (the default) it still runs over the whole index
    capsys.readouterr()
    assert main(["classify", "--examples", str(coll), "--index", str(idx), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 15 and {r["label"] for r in rows} <= {"red", "green", "blue"}


def test_cli_examples_refusals(colour_index, tmp_path, capsys):
    from imgrag.app.cli import main

    coll, idx = colour_index
    bad = tmp_path / "bad"
    for name in ("red", "purple"):
        (bad / name).mkdir(parents=True)
        shutil.copy(coll / "red" / "0.png", bad / name / "x.png")
    code, err = _classify(main, capsys, idx, "--labels", "red,green,blue", "--examples", str(bad))
    assert code == 2 and "'purple' names none of the labels" in err
    code, err = _classify(main, capsys, idx, "--labels", "red,green", "--examples", str(tmp_path / "nowhere"))
    assert code == 2 and "--examples: not a folder" in err
    code, err = _classify(main, capsys, idx)
    assert code == 2 and "give --labels, --labels-file or --examples" in err
