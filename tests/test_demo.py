"""Real semantics on the shipped sample data with the offline lite model (what `make demo` shows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgrag.app.cli import main

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"

#: query → file that must rank first (checked on the demo index built by `make demo`)
TOP1 = {
    "a cat": "cat_chelsea.jpg",
    "a cup of coffee": "coffee_cup.jpg",
    "a rocket launch": "rocket_launch.jpg",
    "a penguin": "penguin.png",
}
#: weaker cases for the lite model (clip art): the expected file is in the top 3
TOP3 = {"a guitar": "guitar.png", "a lighthouse": "lighthouse.png", "a teapot": "teapot.png",
        "a soccer ball": "soccer_ball.png"}


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory):
    idx = tmp_path_factory.mktemp("demo") / "idx"
    assert main(["index", str(SAMPLES), "--model", "lite", "--index", str(idx), "--workers", "1"]) == 0
    return idx


@pytest.mark.slow
def test_demo_queries_rank_expected_image_first(demo_index, capsys):
    capsys.readouterr()
    for query, expected in TOP1.items():
        assert main(["search", query, "-k", "3", "--json", "--index", str(demo_index)]) == 0
        hits = json.loads(capsys.readouterr().out)
        assert Path(hits[0]["path"]).name == expected, (query, [Path(h["path"]).name for h in hits])
    for query, expected in TOP3.items():
        assert main(["search", query, "-k", "3", "--json", "--index", str(demo_index)]) == 0
        names = [Path(h["path"]).name for h in json.loads(capsys.readouterr().out)]
        assert expected in names, (query, names)


@pytest.mark.slow
def test_demo_classify_and_eval_commands(demo_index, capsys):
    capsys.readouterr()
    assert main(["classify", "--labels", "animal,food,vehicle,plant,building,person", "--json",
                 "--index", str(demo_index)]) == 0
    preds = {Path(p["path"]).name: p for p in json.loads(capsys.readouterr().out)}
    assert len(preds) == 71 and preds["cat_chelsea.jpg"]["label"] == "animal"
    assert main(["eval", "zeroshot", str(SAMPLES), "--model", "lite", "--templates", "none", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["images"] == 71 and res["results"][0]["top1"] > 3 / 11  # well above chance (1/11)
    assert main(["eval", "retrieval", "--images", str(SAMPLES), "--captions", str(SAMPLES.parent / "captions.tsv"),
                 "--model", "lite", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 71 and r["text_to_image"]["R@10"] > 0.5
