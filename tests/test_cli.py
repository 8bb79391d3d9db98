"""The CLI end to end with a tiny random open_clip model (in-process and as a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgrag.app.cli import main

MODEL = "imgrag-tiny-clip"


@pytest.fixture
def indexed(tmp_path, sample_images, tiny_model_configs, capsys):
    idx = tmp_path / "idx"
    coll = sample_images[0].parent
    (coll / "broken.jpg").write_text("not an image")
    rc = main(["index", str(coll), "--index", str(idx), "--model", MODEL, "--workers", "0", "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    return idx, coll, rep


def run_json(capsys, *argv):
    rc = main([*argv, "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def test_index_info_search_classify(indexed, capsys):
    idx, coll, rep = indexed
    assert rep["embedded"] == 5 and rep["skipped"] == 1 and rep["total_items"] == 5
    info = run_json(capsys, "info", "--index", str(idx))
    assert info["items"] == 5 and info["model"] == MODEL and info["store"] == "lancedb" and info["skipped"] == 1
    errs = run_json(capsys, "info", "--errors", "--index", str(idx))
    assert [Path(e["path"]).name for e in errs] == ["broken.jpg"] and "not an image" in errs[0]["reason"].lower()

    hits = run_json(capsys, "search", "a photo", "-k", "3", "--index", str(idx))
    assert len(hits) == 3 and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    # image query: the query image is excluded, and results equal brute force over the stored vectors
    q = str(coll / "coffee.jpg")
    hits = run_json(capsys, "search", "--image", q, "-k", "10", "--index", str(idx))
    assert q not in [h["path"] for h in hits] and len(hits) == 4
    from imgrag.retrieval.index import Index

    store = Index.open(idx).store
    tab = store.get([q, *[h["path"] for h in hits]], columns=["id", "vector"])
    vecs = dict(zip(tab["id"].to_pylist(), np.asarray(tab["vector"].to_pylist(), dtype=np.float32)))
    expected = sorted((p for p in vecs if p != q), key=lambda p: -float(vecs[p] @ vecs[q]))
    assert [h["path"] for h in hits] == expected
    # path filter
    hits = run_json(capsys, "search", "a photo", "--path", "*/c*", "--index", str(idx))
    assert {Path(h["path"]).name for h in hits} == {"camera.png", "chelsea.png", "coffee.jpg"}

    preds = run_json(capsys, "classify", "--labels", "cat,rocket,coffee", "--index", str(idx), "--write")
    assert len(preds) == 5
    for p in preds:
        probs = [s for _, s in p["top"]]
        assert abs(sum(probs) - 1.0) < 1e-4 and p["label"] == p["top"][0][0]
    by_label = run_json(capsys, "search", "a photo", "--label", preds[0]["label"], "--index", str(idx))
    assert preds[0]["path"] in [h["path"] for h in by_label]
    assert all(p["label"] == preds[0]["label"] or p["path"] not in [h["path"] for h in by_label] for p in preds)


def test_user_errors_are_one_line(tmp_path, capsys, tiny_model_configs):
    assert main(["search", "x", "--index", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imgrag: error: no imgrag index") and "\n" not in err
    idx = tmp_path / "idx"
    img = tmp_path / "a.png"
    Image.new("RGB", (40, 40), "red").save(img)
    assert main(["index", str(img), "--index", str(idx), "--model", MODEL, "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["index", str(img), "--index", str(idx), "--model", "imgrag-tiny-siglip"]) == 2
    err = capsys.readouterr().err
    assert "built with model 'imgrag-tiny-clip'" in err and "Traceback" not in err
    assert main(["classify", "--labels", "onlyone", "--index", str(idx)]) == 2
    assert "at least two labels" in capsys.readouterr().err
    assert main(["search", "--image", str(tmp_path / "missing.jpg"), "--index", str(idx)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["index", str(tmp_path / "nope"), "--index", str(idx)]) == 2
    assert "path not found" in capsys.readouterr().err


def test_cli_subprocess_and_help(tmp_path, sample_images, tiny_model_configs):
    exe = Path(sys.executable).with_name("imgrag")
    env = dict(os.environ)
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and "index" in out.stdout and "search" in out.stdout
    idx = tmp_path / "idx"
    r = subprocess.run([str(exe), "index", str(sample_images[0].parent), "--index", str(idx), "--model", MODEL],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "5 new/changed images" in r.stdout
    r = subprocess.run([str(exe), "search", "cat", "--index", str(idx), "-k", "2"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 2
    r = subprocess.run([str(exe), "search", "cat", "--index", str(idx), "-k", "0"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 2 and "must be at least 1" in r.stderr


def test_unchanged_rerun_never_loads_the_model(tmp_path, sample_images, tiny_model_configs, capsys):
    """`imgrag index` on an unchanged collection reads the manifest and the file list only: no torch,
    no open_clip (BENCHMARKS.md, incremental re-index); a changed --model is still refused at once."""
    coll, idx = sample_images[0].parent, tmp_path / "idx"
    assert main(["index", str(coll), "--index", str(idx), "--model", MODEL, "--workers", "0"]) == 0
    code = ("import sys, json; from imgrag.app.cli import main; rc = main(sys.argv[1:]); "
            "print(json.dumps([rc, sorted(m for m in ('torch', 'open_clip') if m in sys.modules)]))")
    r = subprocess.run([sys.executable, "-c", code, "index", str(coll), "--index", str(idx)],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert "0 new/changed images" in r.stdout and "5 unchanged" in r.stdout
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [0, []]
    capsys.readouterr()
    assert main(["index", str(coll), "--index", str(idx), "--model", "imgrag-tiny-siglip"]) == 2
    assert "was built with model 'imgrag-tiny-clip'" in capsys.readouterr().err

