"""The UI's side of `imgrag tune`: the Index tab starts a tune job (JobRunner, writer lock), info and the first
screen say whether an adapter is active. Fake embedder (colour semantics), no server."""
from __future__ import annotations

import threading

import pytest
from PIL import Image

from fakes import FakeEmbedder
from imgrag.app.web.backend import Backend, UIConfig
from imgrag.app.web.html import info_html
from imgrag.app.web.viewer import welcome_html
from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.retrieval.errors import BadQueryError
from imgrag.retrieval.index import Index

pytest.importorskip("torch")
COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}


@pytest.fixture
def backend(tmp_path):
    tree = tmp_path / "tree"
    for name, rgb in COLOURS.items():
        (tree / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (24, 24), tuple(max(0, c - 15 * i) for c in rgb)).save(tree / name / f"{name}{i}.png")
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder())
    build_index(idx, [tree], IndexOptions(workers=0, batch_size=4))
    return Backend(UIConfig(index_root=idx.root, thumb_dir=tmp_path / "thumbs", index_workers=0), index=idx), tree


def test_tune_job_from_the_index_tab_and_adapter_shown(backend):
    b, tree = backend
    info = b.info()
    assert info["adapter"] is None and "none (imgrag tune trains one)" in info_html(info)
    assert "tuned adapter active" not in welcome_html(info, [], [])
    for bad, msg in (("", "type the path"), ("relative/dir", "absolute path"), (str(tree / "nope"), "not found")):
        with pytest.raises(BadQueryError, match=msg):
            b.start_tune(bad)

    b.start_tune(str(tree), "clip")
    st = b.jobs.wait(300)
    assert st.state == "done", st.message
    assert st.kind == "tune" and "adapter trained on 12 images" in st.message and "held-out" in st.message
    info = b.info()
    assert info["adapter"]["active"] is True and info["adapter"]["loss"] == "clip"
    assert "active: clip loss on folders" in info_html(info)
    assert "tuned adapter active" in welcome_html(info, [], [])
    assert (b.root / "adapter.npz").is_file()
    # the Classify tab's classifier passes class texts through the adapter, uncalibrated (as the CLI)
    from imgrag.retrieval.queries.classify import ZeroShotClassifier
    from imgrag.retrieval.tune import load_adapter

    clf = b.classifier("red\ngreen\nblue", "")
    plain = ZeroShotClassifier(b.embedder(), ["red", "green", "blue"])
    assert clf.calibration == "none"
    assert clf.weights == pytest.approx(load_adapter(b.index()).apply_text(plain.weights), abs=1e-6)


def test_tune_job_fails_while_another_writer_holds_the_lock(backend):
    b, tree = backend
    held, release = threading.Event(), threading.Event()

    def writer():  # another thread writing the index (an indexer, a classify --write)
        with b.index().writing():
            held.set()
            release.wait(60)

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert held.wait(30)
        b.start_tune(str(tree))
        st = b.jobs.wait(120)
    finally:
        release.set()
        t.join()
    assert st.state == "failed" and "is being updated by another imgrag process" in st.message, st.message
    assert not (b.root / "adapter.npz").exists()
