"""Validate first, destroy last: writes refused for bad arguments leave the index as it was, and
``--rebuild`` builds beside the old index and switches atomically.

- a table of invalid arguments × destructive commands (index, index --rebuild, classify --write, tune)
  × both stores: each is refused and the index keeps the same rows and vectors, byte-identical manifest;
- SIGKILL at seeded random moments of a rebuild (spread over a whole clean run) and at the named moments
  of the switch (before it, temp manifest written, right after it, during and after the deletion of the
  old generation): the index is then the complete old one or the complete new one, row by row, never a
  mix or an empty one; a rerun completes it; both stores;
- SIGINT mid-rebuild keeps the old index; the next ``--rebuild`` resumes and embeds only what is missing;
  a plain run or other settings discard the partial rebuild; a reader open across the switch follows it.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from imgrag.indexer.commit import LocalCommitter
from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.retrieval.index import Index

from fakes import FakeEmbedder
from reliability import KILL_POINTS, all_rows, tiny_collection
from test_crash import BATCH, COMMIT_EVERY, ForkServer

STORES = ["lancedb", "faiss"]
KILLS = 24  # random kill moments that land, per store (plus the named moments of the switch)
OPTS = IndexOptions(workers=0, batch_size=BATCH, commit_every=COMMIT_EVERY)


def state(root: Path) -> tuple[str, dict[str, dict], list[tuple[str, str]]]:
    """(model, rows by id, skip records) of the published index."""
    idx = Index.open(root)
    rows = all_rows(idx)
    skipped = sorted((s["path"], s["reason"]) for s in idx.skipped())
    if hasattr(idx.store, "close"):
        idx.store.close()
    return idx.manifest.model, rows, skipped


def same_state(got: tuple, want: tuple) -> bool:
    (gm, grows, gskip), (wm, wrows, wskip) = got, want
    if gm != wm or gskip != wskip or set(grows) != set(wrows):
        return False
    for k, w in wrows.items():
        g = grows[k]
        if not np.array_equal(np.asarray(g["vector"], np.float32), np.asarray(w["vector"], np.float32)):
            return False
        if {c: v for c, v in g.items() if c not in ("vector", "indexed_at")} != \
                {c: v for c, v in w.items() if c not in ("vector", "indexed_at")}:
            return False
    return True


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name != "index.lock")


# ------------------------------------------------------------------------------------------------
# (a) invalid arguments never change the index
# ------------------------------------------------------------------------------------------------
def _cli(argv: list[str]) -> int:
    from imgrag.app.cli import main

    try:
        return main(argv)
    except SystemExit as e:  # argparse refusals
        return int(e.code or 0)


INDEX_CASES = [  # (name, extra arguments, path override or None); each runs with and without --rebuild
    ("dpi zero", ["--dpi", "0"], None),
    ("dpi nan", ["--dpi", "nan"], None),
    ("dpi text", ["--dpi", "lots"], None),
    ("dpi huge", ["--dpi", "5000"], None),
    ("batch size 0", ["--batch-size", "0"], None),
    ("commit every negative", ["--commit-every", "-1"], None),
    ("max megapixels 0", ["--max-megapixels", "0"], None),
    ("page tiles negative", ["--page-tiles", "-2"], None),
    ("workers negative", ["--workers", "-1"], None),
    ("unknown model", ["--model", "no-such-model-xyz"], None),
    ("model weights missing", ["--model", "imgrag-tiny-clip:/nonexistent/weights.bin"], None),
    ("model weights not a checkpoint", ["--model", "imgrag-tiny-clip:{junk}"], None),
    ("unknown store", ["--store", "sqlite"], None),
    ("faiss factory invalid", ["--store", "faiss", "--faiss-factory", "Bogus99"], None),
    ("faiss factory on lancedb", ["--store", "lancedb", "--faiss-factory", "HNSW32"], None),
    ("ray engine with faiss", ["--engine", "ray", "--store", "faiss"], None),
    ("ray options without ray", ["--ray-actors", "2"], None),
    ("missing path", [], "{tmp}/does-not-exist"),
    ("path under a file", [], "{junk}/sub"),
    ("broken symlink path", [], "{tmp}/dangling"),
    ("object storage source locally", [], "s3://bucket/photos"),
]
NO_REBUILD_ONLY = [  # mismatches that --rebuild exists to allow
    ("other model", ["--model", "imgrag-tiny-siglip"], None),
    ("other store", ["--store", "{other}"], None),
]
OTHER_CASES = [  # (name, argv after the index option)
    ("classify: one label", ["classify", "--write", "--labels", "cat"]),
    ("classify: duplicate labels", ["classify", "--write", "--labels", "cat,cat"]),
    ("classify: bad threshold", ["classify", "--write", "--labels", "cat,dog", "--threshold", "cat=abc"]),
    ("classify: labels file missing", ["classify", "--write", "--labels-file", "/nonexistent/labels.txt"]),
    ("classify: bad limit", ["classify", "--write", "--labels", "cat,dog", "--limit", "0"]),
    ("tune: captions missing", ["tune", "--captions", "/nonexistent/captions.csv"]),
    ("tune: no labels in index", ["tune", "--labels-from-index"]),
    ("tune: unknown loss", ["tune", "--labels-from-index", "--loss", "bogus"]),
]


@pytest.fixture(scope="module")
def base_indexes(tmp_path_factory, tiny_model_configs):
    """One small index per store, built by the CLI with the tiny CLIP model."""
    top = tmp_path_factory.mktemp("base")
    coll = top / "coll"
    tiny_collection(coll, 8, seed=3, size=20)
    out = {}
    for store in STORES:
        root = top / store
        assert _cli(["index", str(coll), "--index", str(root), "--model", "imgrag-tiny-clip", "--store", store,
                     "--workers", "0", "--no-progress", "--device", "cpu", "--precision", "fp32"]) == 0
        out[store] = root
    return coll, out


def _cases():
    for name, extra, path in INDEX_CASES:
        for rebuild in (False, True):
            yield pytest.param("index", extra, path, rebuild, id=f"index{' --rebuild' if rebuild else ''}: {name}")
    for name, extra, path in NO_REBUILD_ONLY:
        yield pytest.param("index", extra, path, False, id=f"index: {name}")
    for name, argv in OTHER_CASES:
        yield pytest.param("other", argv, None, False, id=name)


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("command,args,path,rebuild", list(_cases()))
def test_invalid_arguments_leave_the_index_identical(base_indexes, tmp_path, store, command, args, path, rebuild):
    coll, bases = base_indexes
    root = tmp_path / "idx"
    shutil.copytree(bases[store], root)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a checkpoint" * 10)
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    fill = {"tmp": str(tmp_path), "junk": str(junk), "other": "faiss" if store == "lancedb" else "lancedb"}
    args = [a.format(**fill) for a in args]
    before, before_files = state(root), files(root)
    manifest = (root / "imgrag.json").read_bytes()
    if command == "index":
        argv = ["index", path.format(**fill) if path else str(coll), "--index", str(root), "--workers", "0",
                "--no-progress", "--device", "cpu", "--precision", "fp32", *args] + (["--rebuild"] if rebuild else [])
    else:
        argv = [args[0], "--index", str(root), "--device", "cpu", "--precision", "fp32", *args[1:]]
    code = _cli(argv)
    assert code != 0, f"{argv} was accepted"
    assert (root / "imgrag.json").read_bytes() == manifest
    assert same_state(state(root), before), f"{argv} changed the index"
    assert files(root) == before_files, f"{argv} left files behind or removed some"


# ------------------------------------------------------------------------------------------------
# (b) SIGKILL anywhere in a rebuild: the complete old index or the complete new one
# ------------------------------------------------------------------------------------------------
class RebuildServer(ForkServer):
    def rebuild(self, index: Path, store: str, coll: Path, model: str, kill_at: str = "", workers: int = 0) -> int:
        self.p.stdin.write(f"{index} {store} {coll} {COMMIT_EVERY} {BATCH} {workers} {model} 1 {kill_at}\n")
        self.p.stdin.flush()
        line = self._line()
        assert line.startswith("pid "), line
        return int(line.split()[1])


@pytest.fixture(scope="module")
def server():
    s = RebuildServer()
    yield s
    s.close()


def _old_and_new_collections(tmp_path: Path) -> tuple[Path, Path]:
    """The old index's folder and a different one for the rebuild (other files, one shared name)."""
    old, new = tmp_path / "old", tmp_path / "new"
    tiny_collection(old, 12, seed=11)
    tiny_collection(new, 24, seed=12)
    (new / "d3" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")  # a skip record in the new one
    return old, new


@pytest.mark.slow
@pytest.mark.parametrize("store", STORES)
def test_sigkill_during_rebuild_leaves_old_or_new_never_a_mix(store, tmp_path, server):
    old_coll, new_coll = _old_and_new_collections(tmp_path)
    template = tmp_path / "template"
    build_index(Index.create_or_open(template, FakeEmbedder("fake-old"), store=store), [old_coll], OPTS)
    old = state(template)
    assert old[0] == "fake-old" and len(old[1]) == 12

    durations = []
    for c in range(3):  # the shortest clean rebuild spans the kill moments
        d = tmp_path / f"clean{c}"
        shutil.copytree(template, d)
        t0 = time.perf_counter()
        assert server.wait(server.rebuild(d, store, new_coll, "fake-new")) == 0
        durations.append(time.perf_counter() - t0)
    clean_s = min(durations)
    new = state(tmp_path / "clean0")
    assert new[0] == "fake-new" and len(new[1]) == 24 and len(new[2]) == 1
    assert not same_state(new, old)
    assert [n for n in os.listdir(tmp_path / "clean0") if n not in ("imgrag.json", "index.lock")] == \
        [Index.open(tmp_path / "clean0").manifest.data]  # the old generation is gone after the switch

    rng = np.random.default_rng(2024 if store == "lancedb" else 4202)
    outcomes = {"old": 0, "new": 0}
    moments: list[float] = []
    named = list(KILL_POINTS)
    landed = trials = 0
    while len(moments) < KILLS or named:
        assert trials <= 3 * KILLS, f"only {len(moments)} of {trials} random kills landed before the run finished"
        kill_at, delay = (named.pop(0), 0.0) if len(moments) >= KILLS else ("", float(rng.uniform(0.0, clean_s)))
        trials += 1
        d = tmp_path / f"t{trials:03d}"
        shutil.copytree(template, d)
        pid = server.rebuild(d, store, new_coll, "fake-new", kill_at, workers=1 if trials % 5 == 0 else 0)
        if not kill_at:
            time.sleep(delay)  # the kill moment: the input under test, not a wait for something
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        code = server.wait(pid)
        if code == -signal.SIGKILL:
            landed += 1
            if not kill_at:
                moments.append(delay / clean_s)
        else:
            assert code == 0 and not kill_at, f"trial {trials} ({kill_at or delay}): exit {code}"
        got = state(d)
        if same_state(got, old):
            outcomes["old"] += 1
            assert not kill_at or kill_at in ("before_switch", "switch_temp_written"), kill_at
        else:
            assert same_state(got, new), f"trial {trials} ({kill_at or f'{delay:.3f}s'}): neither old nor new " \
                                         f"({got[0]}, {len(got[1])} rows)"
            outcomes["new"] += 1
            assert not kill_at or kill_at in ("after_switch", "mid_delete", "after_delete"), kill_at
        assert server.wait(server.rebuild(d, store, new_coll, "fake-new")) == 0, f"trial {trials}: rerun failed"
        assert same_state(state(d), new), f"trial {trials}: the rerun did not complete the rebuild"
        assert sorted(os.listdir(d)) == sorted(["imgrag.json", "index.lock", Index.open(d).manifest.data])
    assert landed == KILLS + len(KILL_POINTS)
    # spread over the whole run (24 uniform moments all above 0.2 or all below 0.8: p < 0.5% each)
    assert moments and min(moments) < 0.2 and max(moments) > 0.8
    assert outcomes["old"] and outcomes["new"]
    print(f"\n{store}: {landed} SIGKILLs landed in {trials} rebuilds ({len(KILL_POINTS)} at named moments of the "
          f"switch); old index kept {outcomes['old']}, new one complete {outcomes['new']}, never a mix; "
          f"clean rebuild {clean_s:.2f}s")


# ------------------------------------------------------------------------------------------------
# (c) Ctrl-C, (d) resume, discarding, readers across the switch
# ------------------------------------------------------------------------------------------------
def _interrupt_after_commits(monkeypatch, n: int, real_signal: bool) -> None:
    """Interrupt the run after its ``n``-th commit: a real SIGINT to this process, or KeyboardInterrupt."""
    real = LocalCommitter.commit
    count = {"n": 0}

    def commit(self):
        real(self)
        count["n"] += 1
        if count["n"] == n:
            if real_signal:
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise KeyboardInterrupt

    monkeypatch.setattr(LocalCommitter, "commit", commit)


@pytest.mark.parametrize("store", STORES)
def test_ctrl_c_mid_rebuild_keeps_the_old_index_and_the_rerun_resumes(store, tmp_path, monkeypatch):
    old_coll, new_coll = _old_and_new_collections(tmp_path)
    root = tmp_path / "idx"
    build_index(Index.create_or_open(root, FakeEmbedder("fake-old"), store=store), [old_coll], OPTS)
    old = state(root)
    reader = Index.open(root)  # a reader open across the whole rebuild

    _interrupt_after_commits(monkeypatch, 2, real_signal=True)
    draft = Index.create_or_open(root, FakeEmbedder("fake-new"), store=store, rebuild=True)
    rep = build_index(draft, [new_coll], OPTS)
    monkeypatch.undo()
    assert rep.interrupted and draft.draft
    assert same_state(state(root), old), "Ctrl-C mid-rebuild changed the index"
    assert len(all_rows(reader)) == 12 and reader.manifest.model == "fake-old"  # searches read the old one
    committed = draft.store.count()
    assert 0 < committed < 24

    emb = FakeEmbedder("fake-new")
    again = Index.create_or_open(root, emb, store=store, rebuild=True)
    assert again.manifest.data == draft.manifest.data  # the same draft, resumed
    rep2 = build_index(again, [new_coll], OPTS)
    assert not rep2.interrupted and not again.draft
    assert rep2.embedded == emb.images_embedded == 24 - committed  # only what was missing
    assert rep2.unchanged == committed

    clean = tmp_path / "clean"
    build_index(Index.create_or_open(clean, FakeEmbedder("fake-new"), store=store), [new_coll], OPTS)
    assert same_state(state(root), state(clean))
    # the reader follows the switch on its next use: new model, new rows, no crash
    assert len(all_rows(reader)) == 24 and reader.manifest.model == "fake-new"
    assert sorted(os.listdir(root)) == sorted(["imgrag.json", "index.lock", again.manifest.data])


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("then", ["plain index", "rebuild with another model"])
def test_partial_rebuild_is_discarded_by_other_runs(store, then, tmp_path, monkeypatch, caplog):
    old_coll, new_coll = _old_and_new_collections(tmp_path)
    root = tmp_path / "idx"
    build_index(Index.create_or_open(root, FakeEmbedder("fake-old"), store=store), [old_coll], OPTS)
    _interrupt_after_commits(monkeypatch, 1, real_signal=False)
    draft = Index.create_or_open(root, FakeEmbedder("fake-new"), store=store, rebuild=True)
    assert build_index(draft, [new_coll], OPTS).interrupted
    monkeypatch.undo()
    assert (root / draft.manifest.data / "draft.json").exists()
    with caplog.at_level("WARNING", logger="imgrag.indexer"):
        if then == "plain index":
            idx = Index.create_or_open(root, FakeEmbedder("fake-old"), store=store)
            build_index(idx, [old_coll], OPTS)
            want_model, want_rows = "fake-old", 12
        else:
            idx = Index.create_or_open(root, FakeEmbedder("fake-other"), store=store, rebuild=True)
            assert idx.manifest.data != draft.manifest.data
            build_index(idx, [new_coll], OPTS)
            want_model, want_rows = "fake-other", 24
    assert not (root / draft.manifest.data).exists()
    assert any("discarded the unfinished --rebuild" in r.getMessage() and "fake-new" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    model, rows, _ = state(root)
    assert (model, len(rows)) == (want_model, want_rows)


@pytest.mark.parametrize("store", STORES)
def test_rebuild_without_changes_to_the_model_keeps_searching_the_old_until_the_switch(store, tmp_path):
    """Same model: the draft starts empty beside the old generation, which stays complete until the switch."""
    coll = tmp_path / "c"
    tiny_collection(coll, 6)
    root = tmp_path / "idx"
    build_index(Index.create_or_open(root, FakeEmbedder(), store=store), [coll], OPTS)
    before = state(root)
    draft = Index.create_or_open(root, FakeEmbedder(), store=store, rebuild=True)
    assert draft.store.count() == 0 and draft.skipped() == []
    assert same_state(state(root), before)
    rep = build_index(draft, [coll], OPTS)
    assert rep.embedded == 6 and same_state(state(root), before)  # re-embedded, identical vectors
    assert not (root / "lancedb").exists() and not (root / "faiss").exists()  # the old layout is gone
