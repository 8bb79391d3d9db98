"""Document retrieval: Recall@1/5 of vector, text and hybrid search on real and generated PDFs (lite model).

Two corpora, each with questions whose answer page is known:

- ``rmanuals``: the R manuals from Debian's ``r-doc-pdf`` (default R-intro, R-data, R-admin, R-FAQ:
  291 real pages; ``--manuals`` adds R-lang, R-ints, R-exts). Questions are the manuals' own section titles taken from the PDF
  outline (e.g. "Fixed-width-format files"), numbering removed; the answer is the page the outline
  entry points to. Titles also appear on table-of-contents pages, which compete — as in real use.
- ``figures``: a generated 71-page catalogue, one page per photo of ``data/samples`` (a heading, a
  fixed paragraph of boilerplate, the photo at half page width, and one caption from
  ``data/captions.tsv`` printed under it). Questions are the photo's *other* captions, so the page's
  words only partly match and the picture carries the rest.

Modes go through the real index (``imgrag.indexer`` + LanceDB with its full-text index) and
``imgrag.retrieval.queries.hybrid.search_documents``. Page-embedding variants (centre crop as for
photos, padded page, padded page + strip tiles or + a 2×2 grid on dense pages / on every page, pooled
by mean, by per-dimension max, or scored by the best view) are compared in memory on the same
rendered pages.

    python bench/docs_retrieval.py                 # both corpora (about 20 minutes on 2 busy CPU cores)
    python bench/docs_retrieval.py --corpus figures --json
    python bench/docs_retrieval.py --corpus figures --layouts-only   # page-embedding variants only (~3 min)

Needs: the ``lite`` and ``docs`` extras; ``apt-get download`` (r-doc-pdf is fetched into bench/.cache)
or ``--rdoc-dir`` pointing at the extracted manuals.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, ROOT, ensure_imgrag_importable, log, record, table  # noqa: E402

ensure_imgrag_importable()

MANUALS = ["R-intro", "R-data", "R-admin", "R-FAQ"]  # 291 pages; R-lang, R-ints, R-exts via --manuals
KS = (1, 5)


# ------------------------------------------------------------------------------------------------
# corpora
# ------------------------------------------------------------------------------------------------
def rdoc_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    d = CACHE / "r-doc-pdf"
    manual = d / "x" / "usr" / "share" / "R" / "doc" / "manual"
    if not (manual / "R-intro.pdf").exists():
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "r-doc-pdf"], cwd=d, check=True, capture_output=True)
        deb = next(d.glob("r-doc-pdf_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(d / "x")], check=True)
    return manual


def rmanuals(work: Path, src: Path, n_queries: int, seed: int = 0, manuals=MANUALS) -> tuple[Path, list[tuple[str, str, int]]]:
    """Copy the manuals into ``work/rmanuals``; questions (query, pdf path, answer page) from outlines."""
    import pypdfium2 as pdfium

    out = work / "rmanuals"
    out.mkdir(parents=True, exist_ok=True)
    qs: list[tuple[str, str, int]] = []
    for name in manuals:
        dst = out / f"{name}.pdf"
        if not dst.exists():
            shutil.copyfile(src / f"{name}.pdf", dst)
        doc = pdfium.PdfDocument(str(dst))
        seen: dict[str, int] = {}
        items = []
        for b in doc.get_toc():
            dest = b.get_dest()
            if dest is None or dest.get_index() is None:
                continue
            title = re.sub(r"^(Appendix )?[A-Z0-9]+(\.[0-9]+)*\s+", "", b.get_title().strip())
            words = re.findall(r"[A-Za-z]{2,}", title)
            if len(words) < 2:
                continue
            seen[title.lower()] = seen.get(title.lower(), 0) + 1
            items.append((title, str(dst), dest.get_index() + 1))
        qs += [it for it in items if seen[it[0].lower()] == 1]  # ambiguous titles have no single answer
        doc.close()
    random.Random(seed).shuffle(qs)
    return out, sorted(qs[:n_queries], key=lambda q: (q[1], q[2]))


BOILERPLATE = ("This catalogue page is part of the sample collection shipped with imgrag. Each page shows one "
               "picture with its caption. Pictures are reproduced for testing search over documents; see the "
               "credits file for their sources and licences.")


def figures(work: Path) -> tuple[Path, list[tuple[str, str, int]]]:
    """A generated catalogue PDF: one page per sample photo, one caption printed, the others asked."""
    from fpdf import FPDF
    from PIL import Image

    caps: dict[str, list[str]] = {}
    for line in (ROOT / "data" / "captions.tsv").read_text().splitlines():
        if "\t" in line:
            p, c = line.split("\t", 1)
            caps.setdefault(p, []).append(c.strip())
    out = work / "figures"
    out.mkdir(parents=True, exist_ok=True)
    pdf_path = out / "catalogue.pdf"
    items = sorted(caps)
    qs = []
    if not pdf_path.exists():
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
            im = Image.open(ROOT / "data" / "samples" / rel).convert("RGB")
            w = 105.0
            h = min(150.0, w * im.height / im.width)
            w = h * im.width / im.height
            tmp = out / f"_{n}.jpg"
            im.save(tmp, quality=90)
            # figures sit where documents put them: after the text, mid-page or at the foot of the page
            top = (60.0, 110.0, 275.0 - h)[n % 3]
            pdf.image(str(tmp), x=(210 - w) / 2, y=top, w=w, h=h)
            tmp.unlink()
            pdf.set_xy(20, top + h + 3)
            pdf.set_font("helvetica", "I", 11)
            pdf.multi_cell(170, 6, f"Plate {n}. {caps[rel][0][0].upper() + caps[rel][0][1:]}.")
        pdf.output(str(pdf_path))
    for n, rel in enumerate(items, 1):
        for c in caps[rel][1:]:
            qs.append((c, str(pdf_path), n))
    return out, qs


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
def recall(ranked: list[list[tuple[str, int]]], answers: list[tuple[str, int]]) -> dict[str, float]:
    out = {}
    for k in KS:
        out[f"R@{k}"] = float(np.mean([a in r[:k] for r, a in zip(ranked, answers)]))
    return out


def eval_modes(index, qs, configs) -> dict[str, dict[str, float]]:
    """configs: (label, mode, weights or None, vector gate or None); None = the model's defaults."""
    from imgrag.retrieval.queries.hybrid import search_documents

    answers = [(p, pg) for _, p, pg in qs]
    res = {}
    for name, mode, w, gate in configs:
        ranked = []
        t = time.perf_counter()
        for q, _, _ in qs:
            hits = search_documents(index, q, k=max(KS), mode=mode, weights=w, vector_gate=gate,
                                    with_snippets=False)
            ranked.append([(h.path, h.row["page"]) for h in hits])
        res[name] = {**recall(ranked, answers), "ms_per_query": 1000 * (time.perf_counter() - t) / len(qs)}
    return res


CONFIGS = [("vector", "vector", None, None), ("text", "text", None, None),
           ("hybrid (default for lite: weights 0.5,1, gate 0.10)", "hybrid", None, None),
           ("hybrid, plain RRF 1,1 (no gate)", "hybrid", "1,1", 0.0),
           ("hybrid 0.5,1 (no gate)", "hybrid", "0.5,1", 0.0),
           ("hybrid 1,1, gate 0.10", "hybrid", "1,1", 0.10)]


def eval_layouts(emb, pdfs: list[Path], qs, dpi: float, max_tiles: int, batch: int = 32) -> dict[str, dict]:
    """Vector recall per page-embedding variant, from one rendering of every page."""
    import pypdfium2 as pdfium
    import torch

    from imgrag.retrieval.layout import crop_fraction_of, grid_boxes, is_dense, pad_to_square, tile_boxes
    from imgrag.retrieval.pdf import page_text, render_page

    tf = emb.image_transform()
    cf = crop_fraction_of(emb)
    keys: list[tuple[str, int]] = []
    crop, views, owner, kind = [], [], [], []  # kind: 0 padded page, 1 strip tile, 2 grid tile
    dense_pages = 0
    dense_flags: list[bool] = []
    for p in pdfs:
        doc = pdfium.PdfDocument(str(p))
        for i in range(1, len(doc) + 1):
            img = render_page(doc, i, dpi=dpi)
            dense = is_dense(page_text(doc, i), img.width, img.height, dpi)
            dense_pages += dense
            dense_flags.append(dense)
            keys.append((str(p), i))
            crop.append(tf(img))
            boxes = [(None, 0)] + [(b, 1) for b in tile_boxes(*img.size, max_tiles=max_tiles)]
            if max_tiles >= 2:  # grid tiles of every page (the indexer uses them on dense pages only)
                boxes += [(b, 2) for b in grid_boxes(*img.size)]
            for b, k in boxes:
                views.append(tf(pad_to_square(img if b is None else img.crop(b), cf)))
                owner.append(len(keys) - 1)
                kind.append(k)
        doc.close()

    def embed(ts):
        return np.concatenate([emb.embed_pixels(torch.stack(ts[i:i + batch])) for i in range(0, len(ts), batch)])
    v_crop = embed(crop)
    v_views = embed(views)
    owner, kind = np.asarray(owner), np.asarray(kind)
    v_pad = v_views[kind == 0]
    n = len(keys)
    # the indexer's views: padded page + grid tiles for dense pages, + strip tiles otherwise
    has_grid = np.asarray(dense_flags, bool)
    used = (kind == 0) | ((kind == 2) & has_grid[owner]) | ((kind == 1) & ~has_grid[owner])
    strips = kind != 2
    q = emb.embed_texts([x for x, _, _ in qs])
    answers = [(p, pg) for _, p, pg in qs]

    def ranked_from(scores):
        top = np.argsort(-scores, axis=1)[:, : max(KS)]
        return [[keys[j] for j in row] for row in top]

    def mean_of(sel):
        v = np.stack([v_views[sel & (owner == i)].mean(0) for i in range(n)])
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def elementwise_max_of(sel):  # one stored vector: the per-dimension max of the views' vectors
        v = np.stack([v_views[sel & (owner == i)].max(0) for i in range(n)])
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def max_of(sel):
        sims = np.full((len(qs), n), -np.inf, dtype=np.float32)
        np.maximum.at(sims.T, owner[sel], (q @ v_views[sel].T).T)
        return sims
    grid_all = kind != 1
    out = {"centre crop (photo preprocessing)": recall(ranked_from(q @ v_crop.T), answers),
           "padded page": recall(ranked_from(q @ v_pad.T), answers),
           f"padded page + {max_tiles} strip tiles, mean": recall(ranked_from(q @ mean_of(strips).T), answers),
           f"padded page + {max_tiles} strip tiles, max over views (one row per view)":
               recall(ranked_from(max_of(strips)), answers),
           f"padded page + tiles (2x2 grid on {dense_pages} dense pages), mean (default)":
               recall(ranked_from(q @ mean_of(used).T), answers),
           f"padded page + tiles (2x2 grid on {dense_pages} dense pages), elementwise max (one vector)":
               recall(ranked_from(q @ elementwise_max_of(used).T), answers),
           f"padded page + tiles (2x2 grid on {dense_pages} dense pages), max over views (one row per view)":
               recall(ranked_from(max_of(used)), answers),
           "padded page + 2x2 grid on every page, mean": recall(ranked_from(q @ mean_of(grid_all).T), answers),
           "padded page + 2x2 grid on every page, max over views (one row per view)":
               recall(ranked_from(max_of(grid_all)), answers)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", action="append", choices=["rmanuals", "figures"], default=None)
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    ap.add_argument("--rdoc-dir", help="folder holding R-intro.pdf etc. (default: apt-get download r-doc-pdf)")
    ap.add_argument("--manuals", default=",".join(MANUALS), help="comma-separated r-doc-pdf manuals")
    ap.add_argument("--queries", type=int, default=200, help="questions sampled from the R manuals' outlines")
    ap.add_argument("--dpi", type=float, default=150.0)
    ap.add_argument("--page-tiles", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--layouts", action="append", choices=["rmanuals", "figures", "none"], default=None,
                    help="corpora on which page-embedding variants are compared (default: figures; the lite "
                         "model cannot read, so on text-only manuals every variant is near chance)")
    ap.add_argument("--reuse-index", action="store_true", help="evaluate an index left in --work by an earlier run")
    ap.add_argument("--layouts-only", action="store_true",
                    help="only compare page-embedding variants (no index, no search modes)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    corpora = args.corpus or ["figures", "rmanuals"]

    from imgrag.indexer.pipeline import IndexOptions, build_index
    from imgrag.retrieval.embedders import load_embedder
    from imgrag.retrieval.index import Index

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="imgrag-docs-bench-"))
    emb = load_embedder("lite", device="cpu")
    all_figs = {}
    for corpus in corpora:
        if corpus == "rmanuals":
            folder, qs = rmanuals(work, rdoc_dir(args.rdoc_dir), args.queries,
                                  manuals=[m.strip() for m in args.manuals.split(",") if m.strip()])
        else:
            folder, qs = figures(work)
        pdfs = sorted(folder.glob("*.pdf"))
        if args.layouts_only:
            log(f"{corpus}: {len(pdfs)} PDFs, {len(qs)} questions; layout variants only")
            layouts = eval_layouts(emb, pdfs, qs, args.dpi, args.page_tiles)
            all_figs[corpus] = {"questions": len(qs), "layouts": layouts}
            record("docs_retrieval_layouts", all_figs[corpus], {"corpus": corpus, "dpi": args.dpi,
                                                                 "page_tiles": args.page_tiles, "model": "lite"})
            table(["page embedding (vector mode)", "R@1", "R@5"],
                  [[m, f"{v['R@1']:.3f}", f"{v['R@5']:.3f}"] for m, v in layouts.items()],
                  title=f"{corpus}: {len(qs)} questions, lite model")
            continue
        log(f"{corpus}: {len(pdfs)} PDFs, {len(qs)} questions; indexing")
        idx_dir = work / f"index-{corpus}"
        if not args.reuse_index:
            shutil.rmtree(idx_dir, ignore_errors=True)
        index = Index.create_or_open(idx_dir, emb, store="lancedb")
        t = time.perf_counter()
        rep = build_index(index, [folder], IndexOptions(workers=args.workers, batch_size=16, dpi=args.dpi,
                                                        page_tiles=args.page_tiles))
        secs = time.perf_counter() - t
        pages = index.store.count()
        log(f"  {rep.pages} pages indexed in {secs:.0f}s ({pages} in the index); evaluating modes")
        modes = eval_modes(index, qs, CONFIGS)
        layouts = {}
        if corpus in (args.layouts or ["figures"]):
            log("  layout variants")
            layouts = eval_layouts(emb, pdfs, qs, args.dpi, args.page_tiles)
        figs = {"pages": pages, "questions": len(qs), "modes": modes, "layouts": layouts}
        if rep.pages:
            figs.update(index_s=round(secs, 1), pages_per_s=round(rep.pages / secs, 2))
        all_figs[corpus] = figs
        record("docs_retrieval", figs, {"corpus": corpus, "dpi": args.dpi, "page_tiles": args.page_tiles,
                                         "model": "lite", "queries": args.queries})
        table(["mode", "R@1", "R@5", "ms/query"],
                    [[m, f"{v['R@1']:.3f}", f"{v['R@5']:.3f}", f"{v['ms_per_query']:.0f}"] for m, v in modes.items()],
                    title=f"{corpus}: {pages} pages, {len(qs)} questions, lite model")
        if layouts:
            table(["page embedding (vector mode)", "R@1", "R@5"],
                  [[m, f"{v['R@1']:.3f}", f"{v['R@5']:.3f}"] for m, v in layouts.items()])
        if rep.pages:
            print(f"indexing: {rep.pages} pages in {secs:.0f}s ({rep.pages / secs:.2f} pages/s, "
                  f"dpi {args.dpi:g}, {args.page_tiles} tiles, workers {args.workers})\n", flush=True)
    if args.json:
        print(json.dumps(all_figs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
