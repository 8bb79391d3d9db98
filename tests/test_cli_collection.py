"""CLI: imgrag duplicates and imgrag export on an index built with the fake embedder (no model is loaded)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from imgrag.app.cli import main
from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.retrieval.index import Index

from fakes import FakeEmbedder
from test_duplicates import planted


def _index(tmp_path):
    d, truth = planted(tmp_path)
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store="lancedb")
    build_index(idx, [str(d)], IndexOptions(batch_size=4, workers=0))
    return str(tmp_path / "idx"), truth


def test_duplicates_json_text_and_errors(tmp_path, capsys):
    root, truth = _index(tmp_path)
    assert main(["duplicates", "--index", root, "--threshold", "0.5", "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert [{m["path"] for m in g} for g in groups] == [truth[1], truth[0]]
    assert all(g[0]["keeper"] and {"size", "width", "height", "score"} <= set(g[0]) for g in groups)
    assert main(["duplicates", "--index", root, "--threshold", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "group 1 (4 images)" in out and "keep" in out and "nothing was deleted" in out
    assert main(["duplicates", "--index", root, "--threshold", "0.5", "--path", "*/nothing/*"]) == 0
    assert "no duplicates among 0 images" in capsys.readouterr().out
    assert main(["duplicates", "--index", root, "-k", "0"]) != 0
    assert "k must be at least 1" in capsys.readouterr().err
    assert main(["duplicates", "--index", str(tmp_path / "none")]) != 0
    assert "no imgrag index" in capsys.readouterr().err


def test_export_cli(tmp_path, capsys):
    root, truth = _index(tmp_path)
    out = tmp_path / "x.parquet"
    assert main(["export", "--index", root, str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    t = pq.read_table(out)
    assert rep["rows"] == t.num_rows == 10 and "vector" in t.column_names
    assert set(t["path"].to_pylist()) >= truth[0] | truth[1]
    assert main(["export", "--index", root, str(tmp_path / "no" / "x.parquet")]) != 0
    assert "does not exist" in capsys.readouterr().err
