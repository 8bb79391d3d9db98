"""Search over photos and documents in one index: recall@10 / nDCG@10 per mode and per kind of query.

The corpus is what a user's folder looks like: the 71 photos of ``data/samples``, two real manuals from
Debian's ``r-doc-pdf`` (R-data and R-FAQ, 93 text pages) and a generated catalogue PDF with one page for
every third sample photo (heading, boilerplate, the photo, one of its captions printed under it). Queries
of four kinds, each with its known relevant items:

- ``photo``: captions from ``data/captions.tsv`` of photos that have no catalogue page → that photo;
- ``category``: the issue's one-word photo queries ("food", "a person", …) → the photos of that folder
  and the catalogue pages showing them;
- ``page``: section titles from the manuals' outlines (numbering removed) → the page they point to;
- ``mixed``: captions of the catalogued photos (the printed one and the others) → the photo and its page.

Every mode (vector, text, hybrid, auto) goes through ``imgrag.retrieval.queries.hybrid.search_documents``
on a real LanceDB index with the lite model (offline, real weights). Besides recall and nDCG it counts the
queries that hold *fewer relevant photos than vector search alone* — the failure the fusion must
never show, listed by query — in the top 10, and (since 2026-12-03) at any cutoff k ≤ 10, telling apart
the queries where the item that took a photo's place is relevant itself (the catalogue page of that photo)
from those where it is not; and how many queries return nothing. Every table is also given for two fixed
halves of the queries (split by a hash of the text). ``--sweep`` adds hybrid weight/gate variants and the
keyword-evidence variants of ``hybrid.py`` (full-match level × sharing power, with and without the visual
margin), and for each half the variant it would choose, scored on the other half.

    python bench/mixed_search.py --work bench/.cache/mixed          # index once (about 4 min), then evaluate
    python bench/mixed_search.py --work bench/.cache/mixed --json   # the same, figures as JSON
    python bench/mixed_search.py --work bench/.cache/mixed --sweep  # + variants and the half/half check
    python bench/mixed_search.py --work bench/.cache/mixed --second-corpus  # the check corpus (below)

``--second-corpus`` checks constants chosen here on other data: the same photos beside four other manuals
(R-admin, R-intro, R-lang, R-ints: 348 pages, no catalogue), 147 photo captions, 20 category queries and
336 section titles.

Needs the ``lite`` and ``docs`` extras and ``fpdf2``; the manuals come from ``apt-get download r-doc-pdf``
(cached in bench/.cache) or ``--rdoc-dir``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, ensure_imgrag_importable, log, record, table  # noqa: E402

ensure_imgrag_importable()

from docs_retrieval import BOILERPLATE, rdoc_dir, rmanuals  # noqa: E402

K = 10
MANUALS = ["R-data", "R-FAQ"]
SAMPLES = ROOT / "data" / "samples"
#: the issue's photo queries, by folder of data/samples
CATEGORIES = {"food": "food", "a person": "people", "an animal": "animals", "a building": "buildings",
              "a musical instrument": "music", "a plant": "plants", "a vehicle": "vehicles",
              "outer space": "space", "sports": "sports", "a texture": "textures", "an object": "objects"}
MODES = ("vector", "text", "hybrid", "auto")
#: --second-corpus: the same photos beside four other manuals (no catalogue), for checking constants chosen
#: on the first corpus; more one-word photo queries, since those meet manual words ("a car": Lisp's CAR)
SECOND_MANUALS = ["R-admin", "R-intro", "R-lang", "R-ints"]
SECOND_CATEGORIES = {"a dog": "animals", "a car": "vehicles", "a flower": "plants", "a fruit": "food",
                     "music": "music", "a ball": "sports", "a planet": "space", "a house": "buildings",
                     "a person walking": "people"}


SWEEP = [("0.5,1", 0.0), ("1,1", 0.1), ("1,1", 0.0), ("1,2", 0.1), ("2,1", 0.1), ("3,1", 0.1), ("1,3", 0.1)]


def load_hybrid_from(rev: str) -> None:
    """Replace ``imgrag.retrieval.queries.hybrid`` by its source at git revision ``rev``."""
    import subprocess
    import types

    src = subprocess.run(["git", "show", f"{rev}:retrieval/queries/hybrid.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    mod = types.ModuleType("imgrag.retrieval.queries.hybrid")
    mod.__file__ = f"{rev}:retrieval/queries/hybrid.py"
    sys.modules[mod.__name__] = mod
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    import imgrag.retrieval.queries as pkg

    pkg.hybrid = mod


def captions() -> dict[str, list[str]]:
    caps: dict[str, list[str]] = {}
    for line in (ROOT / "data" / "captions.tsv").read_text().splitlines():
        if "\t" in line:
            p, c = line.split("\t", 1)
            caps.setdefault(p, []).append(c.strip())
    return caps


def catalogue(out: Path, items: list[str], caps: dict[str, list[str]]) -> Path:
    """One A4 page per photo in ``items`` (photo + its first caption printed under it)."""
    from fpdf import FPDF
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    pdf_path = out / "catalogue.pdf"
    if pdf_path.exists():
        return pdf_path
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(False)
    for n, rel in enumerate(items, 1):
        pdf.add_page()
        pdf.set_font("helvetica", "B", 16)
        pdf.set_xy(20, 20)
        pdf.cell(170, 10, f"Plate {n}")
        pdf.set_font("helvetica", size=10)
        pdf.set_xy(20, 35)
        pdf.multi_cell(170, 5, BOILERPLATE)
        im = Image.open(SAMPLES / rel).convert("RGB")
        h = min(150.0, 105.0 * im.height / im.width)
        w = h * im.width / im.height
        tmp = out / f"_{n}.jpg"
        im.save(tmp, quality=90)
        top = (60.0, 110.0, 275.0 - h)[n % 3]
        pdf.image(str(tmp), x=(210 - w) / 2, y=top, w=w, h=h)
        tmp.unlink()
        pdf.set_xy(20, top + h + 3)
        pdf.set_font("helvetica", "I", 11)
        pdf.multi_cell(170, 6, f"Plate {n}. {caps[rel][0][0].upper() + caps[rel][0][1:]}.")
    pdf.output(str(pdf_path))
    return pdf_path


def corpus(work: Path, rdoc: Path) -> tuple[list[Path], list[tuple[str, str, set[str]]]]:
    """Folders to index and queries (kind, text, relevant ids)."""
    caps = captions()
    items = sorted(caps)
    in_cat = items[::3]
    docs = work / "docs"
    cat = catalogue(docs, in_cat, caps)
    manual_dir, titles = rmanuals(work, rdoc, 10_000, manuals=MANUALS)
    photo_id = {rel: str((SAMPLES / rel).resolve()) for rel in items}
    page_of = {rel: f"{cat.resolve()}#page={n}" for n, rel in enumerate(in_cat, 1)}
    qs: list[tuple[str, str, set[str]]] = []
    for rel in items:
        for c in caps[rel]:
            if rel in page_of:
                qs.append(("mixed", c, {photo_id[rel], page_of[rel]}))
            else:
                qs.append(("photo", c, {photo_id[rel]}))
    for q, folder in CATEGORIES.items():
        rel = {r for r in items if r.split("/")[0] == folder}
        if rel:
            qs.append(("category", q, {photo_id[r] for r in rel} | {page_of[r] for r in rel if r in page_of}))
    for title, pdf, page in titles:
        qs.append(("page", title, {f"{Path(pdf).resolve()}#page={page}"}))
    return [SAMPLES, docs, manual_dir], qs


def second_corpus(work: Path, rdoc: Path) -> tuple[list[Path], list[tuple[str, str, set[str]]]]:
    """Folders and queries of the check corpus: data/samples + SECOND_MANUALS (348 pages); photo captions
    (→ that photo), category queries (→ the folder's photos) and the manuals' section titles (→ their page)."""
    caps = captions()
    photo_id = {rel: str((SAMPLES / rel).resolve()) for rel in caps}
    manual_dir, titles = rmanuals(work, rdoc, 10_000, manuals=SECOND_MANUALS)
    qs = [("photo", c, {photo_id[rel]}) for rel in sorted(caps) for c in caps[rel]]
    for q, folder in {**CATEGORIES, **SECOND_CATEGORIES}.items():
        qs.append(("category", q, {photo_id[r] for r in caps if r.split("/")[0] == folder}))
    qs += [("page", title, {f"{Path(pdf).resolve()}#page={page}"}) for title, pdf, page in titles]
    return [SAMPLES, manual_dir], qs


class MemoTexts:
    """The embedder with a cache of text vectors (every mode embeds the same queries)."""

    def __init__(self, emb):
        self._emb, self._memo = emb, {}

    def __getattr__(self, name):
        return getattr(self._emb, name)

    def embed_texts(self, texts):
        import numpy as np

        missing = [t for t in texts if t not in self._memo]
        if missing:
            for t, v in zip(missing, self._emb.embed_texts(missing)):
                self._memo[t] = v
        return np.stack([self._memo[t] for t in texts])


def run_modes(index, qs, modes=MODES, **kw) -> dict[str, list[list[str]]]:
    """{mode: top-10 ids per query}."""
    from imgrag.retrieval.queries.hybrid import search_documents

    got: dict[str, list[list[str]]] = {}
    for mode in modes:
        t = time.perf_counter()
        got[mode] = [[h.id for h in search_documents(index, q, k=K, mode=mode, with_snippets=False, **kw)]
                     for _, q, _ in qs]
        log(f"  {mode}: {1000 * (time.perf_counter() - t) / len(qs):.0f} ms/query")
    return got


def score(got: dict[str, list[list[str]]], qs, sel=None) -> dict[str, dict[str, dict]]:
    """{mode: {kind: {R@10, nDCG@10, fewer_photos, fewer_queries, empty, n}}} over the queries ``sel`` (all by
    default); fewer_photos: queries whose top k holds fewer relevant photos than vector mode's at some k ≤ 10
    (:func:`fewer_photos`), fewer_by_irrelevant: those of them where an irrelevant item took a photo's place,
    fewer_at_10: those whose top 10 as a whole holds fewer (the count before 2026-12-03)."""
    sel = range(len(qs)) if sel is None else sel
    out: dict[str, dict[str, dict]] = {}
    kinds = sorted({qs[i][0] for i in sel}) + ["all"]
    for mode in got:
        out[mode] = {}
        for kind in kinds:
            rec, ndcg, fewer, empty, by_irrelevant, at_k = [], [], [], 0, 0, 0
            for i in sel:
                if kind not in ("all", qs[i][0]):
                    continue
                rel, ids = qs[i][2], got[mode][i]
                rec.append(len(rel & set(ids)) / len(rel))
                dcg = sum(1 / math.log2(r + 2) for r, x in enumerate(ids) if x in rel)
                ndcg.append(dcg / sum(1 / math.log2(r + 2) for r in range(min(len(rel), K))))
                why = fewer_photos(ids, got["vector"][i], rel) if "vector" in got else None
                if why:
                    fewer.append(qs[i][1])
                    by_irrelevant += why == "irrelevant"
                    at_k += fewer_photos(ids, got["vector"][i], rel, (K,)) is not None
                empty += not ids
            out[mode][kind] = {"R@10": sum(rec) / len(rec), "nDCG@10": sum(ndcg) / len(ndcg),
                               "fewer_photos": len(fewer), "fewer_queries": fewer,
                               "fewer_by_irrelevant": by_irrelevant, "fewer_at_10": at_k, "empty": empty,
                               "n": len(rec)}
    return out


def fewer_photos(ids: list[str], vec: list[str], rel: set[str], cutoffs=range(1, K + 1)) -> str | None:
    """Whether, at some cutoff k ≤ 10, the top k of ``ids`` hold fewer relevant photos than vector search's top k
    (a photo pushed from 5th to 6th by a page counts at k = 5): None if never, else ``"relevant"`` when every
    item that took a photo's place is itself relevant (the catalogue page showing that photo), ``"irrelevant"``
    when one is not."""
    photos = {x for x in rel if "#page=" not in x}
    for k in cutoffs:
        if len(photos.intersection(ids[:k])) < len(photos.intersection(vec[:k])):
            intruders = set(ids[:k]) - set(vec[:k])
            return "relevant" if intruders <= rel else "irrelevant"
    return None


def evaluate(index, qs, modes=MODES, **kw) -> dict[str, dict[str, dict]]:
    return score(run_modes(index, qs, modes, **kw), qs)


def halves(qs) -> list[list[int]]:
    """Two fixed halves of the queries (by a hash of the text) for choosing on one and checking on the other."""
    h = [int(hashlib.md5(q.encode()).hexdigest(), 16) % 2 for _, q, _ in qs]
    return [[i for i, x in enumerate(h) if x == half] for half in (0, 1)]


def evidence_sweep(index, qs, vec: list[list[str]]) -> dict:
    """Keyword-evidence variants (FULL_MATCH × SHARE_POWER of hybrid.py, without its visual margin; FULL_MATCH
    None = BM25 relative to the query's best hit, the rule before 2026-12; then the default with the margin)
    on all queries and on each half, and the variant (without margin) a half would choose — no page or mixed
    recall lost against the old rule, then fewest photos taken by irrelevant items, then fewest 'fewer
    photos', then best R@10 — scored on the other half."""
    from imgrag.retrieval.queries import hybrid

    keep = hybrid.FULL_MATCH, hybrid.SHARE_POWER, hybrid.VISUAL_MARGIN
    runs = {}
    try:
        for margin in (float("inf"), keep[2]):  # without the visual margin (the old rule had none), then with
            hybrid.VISUAL_MARGIN = margin
            for full in (None, 1.5, 1.75, 2.0, 2.5, 3.0):
                for power in ((0.0,) if full is None else (0.0, 0.25, 0.5, 0.75, 1.0)):
                    if margin != float("inf") and (full, power) != keep[:2]:
                        continue
                    hybrid.FULL_MATCH, hybrid.SHARE_POWER = full, power
                    log(f"keyword evidence: full match {full}, sharing power {power}, visual margin {margin}")
                    runs[(full, power, margin)] = run_modes(index, qs, ("hybrid",))["hybrid"]
    finally:
        hybrid.FULL_MATCH, hybrid.SHARE_POWER, hybrid.VISUAL_MARGIN = keep
    parts = halves(qs)
    res = {f"{f}/{p}" + ("" if m == float("inf") else f" + margin {m}"):
           {"all": score({"vector": vec, "hybrid": got}, qs)["hybrid"],
            **{f"half{h}": score({"vector": vec, "hybrid": got}, qs, parts[h])["hybrid"] for h in (0, 1)}}
           for (f, p, m), got in runs.items()}
    old = res["None/0.0"]

    def key(name: str, part: str):
        r, b = res[name][part], old[part]
        lost = r["page"]["R@10"] < b["page"]["R@10"] - 1e-9 or r["mixed"]["R@10"] < b["mixed"]["R@10"] - 1e-9
        return lost, r["all"]["fewer_by_irrelevant"], r["all"]["fewer_photos"], -r["all"]["R@10"]
    cv = {}
    for train, test in (("half0", "half1"), ("half1", "half0")):
        pick = min((n for n in res if "margin" not in n), key=lambda n: key(n, train))
        cv[f"chosen on {train}"] = {"variant": pick, "train": res[pick][train]["all"], "test": res[pick][test]["all"],
                                    "test_old_rule": old[test]["all"]}
    return {"variants": res, "cv": cv}


def print_table(res: dict, title: str) -> None:
    kinds = list(next(iter(res.values())))
    rows = []
    for mode, by_kind in res.items():
        rows.append([mode] + [f"{v['R@10']:.3f} / {v['nDCG@10']:.3f}" for v in by_kind.values()]
                    + [f"{by_kind['all']['fewer_at_10']} / {by_kind['all']['fewer_photos']} "
                       f"({by_kind['all']['fewer_by_irrelevant']})", f"{by_kind['all']['empty']}"])
    table(["mode"] + [f"{k} (n={res['vector'][k]['n']}) R@10 / nDCG@10" for k in kinds]
          + ["fewer photos than vector: at k = 10 / at some k ≤ 10 (of them, an irrelevant item in a photo's "
             "place)", "empty"], rows, title=title)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", help="working folder; an index left there by an earlier run is reused")
    ap.add_argument("--rdoc-dir", help="folder holding R-data.pdf and R-FAQ.pdf (default: apt-get download)")
    ap.add_argument("--label", default="current", help="name of this run in the results (e.g. before, after)")
    ap.add_argument("--hybrid-from", metavar="REV",
                    help="evaluate retrieval/queries/hybrid.py as of a git revision (the 'before' figures: "
                         "the rank fusion of commit 04c2170)")
    ap.add_argument("--sweep", action="store_true", help="also compare hybrid weights and vector gates")
    ap.add_argument("--second-corpus", action="store_true",
                    help="evaluate on the check corpus instead: data/samples beside R-admin, R-intro, R-lang and "
                         "R-ints (no catalogue; index in WORK/second)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.hybrid_from:
        load_hybrid_from(args.hybrid_from)

    from imgrag.indexer.pipeline import IndexOptions, build_index
    from imgrag.retrieval.embedders import load_embedder
    from imgrag.retrieval.index import Index

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="imgrag-mixed-bench-"))
    if args.second_corpus:
        work = work / "second"
        folders, qs = second_corpus(work, rdoc_dir(args.rdoc_dir))
    else:
        folders, qs = corpus(work, rdoc_dir(args.rdoc_dir))
    emb = load_embedder("lite", device="cpu")
    idx_dir = work / "index"
    if not (idx_dir / "imgrag.json").exists():
        shutil.rmtree(idx_dir, ignore_errors=True)
    index = Index.create_or_open(idx_dir, emb, store="lancedb")
    t = time.perf_counter()
    rep = build_index(index, folders, IndexOptions(workers=1, batch_size=16))
    log(f"index: {index.store.count()} items ({rep.embedded} embedded in {time.perf_counter() - t:.0f}s); "
        f"{len(qs)} queries")
    index._embedder = MemoTexts(index.embedder)  # every mode embeds the same queries: embed each once
    got = run_modes(index, qs)
    res = score(got, qs)
    record("mixed_search", res, {"label": args.label, "model": "lite", "k": K,
                                 "manuals": SECOND_MANUALS if args.second_corpus else MANUALS,
                                 "hybrid_from": args.hybrid_from})
    print_table(res, f"{'check' if args.second_corpus else 'mixed'} corpus ({index.store.count()} items), lite model, "
                     f"{args.label}")
    for h, part in enumerate(halves(qs)):
        print_table(score(got, qs, part), f"half {h} of the queries (fixed hash split), {args.label}")
    log(f"fewer photos than vector ({args.label}): {res['auto']['all']['fewer_queries']}")
    if args.sweep:
        sweep = {}
        for w, gate in SWEEP:
            log(f"hybrid weights {w}, gate {gate}")
            sweep[f"hybrid {w}, gate {gate}"] = evaluate(index, qs, ("vector", "hybrid"), weights=w,
                                                         vector_gate=gate)["hybrid"]
        record("mixed_search_sweep", sweep, {"label": args.label, "model": "lite", "k": K})
        print_table({"vector": res["vector"], **sweep}, "hybrid variants")
        ev = evidence_sweep(index, qs, got["vector"])
        record("mixed_search_evidence", ev, {"label": args.label, "model": "lite", "k": K})
        rows = [[n] + [f"{v[part]['all']['fewer_photos']} ({v[part]['all']['fewer_by_irrelevant']})"
                       for part in ("half0", "half1", "all")]
                + [f"{v['all'][k]['R@10']:.3f}" for k in ("photo", "category", "page", "mixed", "all")]
                for n, v in ev["variants"].items()]
        table(["full match / sharing power", "fewer h0", "fewer h1", "fewer all", "photo", "category", "page",
               "mixed", "all"], rows, title="keyword evidence variants (R@10 over all queries)")
        for name, c in ev["cv"].items():
            log(f"{name}: {c['variant']}; held-out half: fewer photos {c['test']['fewer_photos']} "
                f"({c['test']['fewer_by_irrelevant']} by irrelevant items) {c['test']['fewer_queries']} "
                f"(old rule {c['test_old_rule']['fewer_photos']}), R@10 all "
                f"{c['test']['R@10']:.3f} (old rule {c['test_old_rule']['R@10']:.3f})")
        res = {**res, **sweep, "evidence": ev}
    if args.json:
        print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
