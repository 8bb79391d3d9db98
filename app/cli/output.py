"""What the ``imgrag`` commands print: JSON on stdout for ``--json``, otherwise plain lines for a terminal.

File names and model text are untrusted: they are printed with control characters escaped (:func:`safe`),
so nothing reaches the terminal as an escape sequence. Paths are shown in the display form of
:mod:`imgrag.retrieval.paths` (a name byte that is not UTF-8 as ``\\xe9``, a backslash as ``\\\\``), as text
and in ``--json`` (every ``"path"`` value and the ``"roots"``); ``"id"`` stays the stored key.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from imgrag.retrieval.paths import display


def print_json(obj: Any) -> None:
    print(json.dumps(_shown(obj), indent=2, default=str, ensure_ascii=False))


def _shown(obj: Any, key: str | None = None) -> Any:
    """``obj`` with every path (a ``"path"`` value, the ``"roots"``) in display form."""
    if isinstance(obj, dict):
        return {k: _shown(v, k) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_shown(v, key) for v in obj]
    if key in ("path", "roots") and isinstance(obj, str):
        return display(obj)
    return obj


def safe(s: str) -> str:
    """Printable form of a path (file names may hold control characters)."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in str(s))


class IndexProgress:
    """The indexing progress bar (tqdm on stderr), shown from the first progress report on."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bar = None

    def __call__(self, p) -> None:
        if self.bar is None:
            self.bar = self._tqdm(total=p.total, unit="img", desc="indexing", dynamic_ncols=True)
        self.bar.n = p.done
        self.bar.set_postfix(embedded=p.embedded, reused=p.reused, skipped=p.skipped, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def print_index_report(rep, index, ocr_off: bool) -> None:
    print(f"indexed {rep.embedded} new/changed images ({rep.reused} reused by content hash), "
          f"{rep.unchanged} unchanged, {rep.deleted} removed, {len(rep.skipped)} skipped; "
          f"{rep.total_items} items in {index.root} [{index.manifest.model}, {index.manifest.store}] "
          f"in {rep.seconds.get('total', 0):.1f}s ({rep.images_per_s:.1f} img/s)")
    if rep.pages:
        print(f"documents: {rep.documents} PDFs, {rep.pages} pages ({rep.ocr_pages} OCR'd)")
    if rep.pages_without_text:
        from imgrag.retrieval.ocr import INSTALL_HINT

        print(f"note: {rep.pages_without_text} PDF pages have no text layer and were not OCR'd, so keyword search "
              f"cannot find them; " + ("OCR was turned off (--no-ocr)" if ocr_off else INSTALL_HINT)
              + ", then re-run with --rebuild", file=sys.stderr)
    if rep.skipped:
        print(f"skipped files: see `imgrag info --errors --index {index.root}`")


def hit_dict(h) -> dict:
    r = h.row
    return {"path": h.path, "score": round(float(h.score), 6), "id": h.id, "page": r.get("page"),
            "taken_at": r.get("taken_at"), "width": r.get("width"), "height": r.get("height"),
            "label": r.get("label"),
            # other paths holding the same content (exact copies folded into this result); [] with --all-copies
            "copies": [display(p) for p in r.get("copies") or []],
            **({"snippet": r.get("snippet"), "match_spans": r.get("match_spans")} if r.get("snippet") else {}),
            **{k: r[k] for k in ("rank_vector", "rank_text") if r.get(k) is not None},
            # what the score is made of: the cosine similarity and the keyword match (hybrid, text)
            **{k: round(float(r[k]), 6) for k in ("similarity", "keyword", "bm25") if r.get(k) is not None},
            **({"matched_terms": list(r["matched_terms"])} if r.get("matched_terms") is not None else {})}


def print_hits(hits) -> None:
    """One line per hit (rank, score, path, page, date), then its text snippet with the query's words in bold
    on a colour terminal."""
    if not hits:
        print("no results")
    bold = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    for rank, h in enumerate(hits, 1):
        date = h.row.get("taken_at")
        extra = f"  {date:%Y-%m-%d}" if date else ""
        page = f" (page {h.row['page']})" if h.row.get("page") else ""
        print(f"{rank:>3}  {h.score:.4f}  {display(h.path)}{page}{extra}")
        if h.row.get("copies"):
            print(f"       also at: {', '.join(display(p) for p in h.row['copies'])}")
        if h.row.get("snippet"):
            from imgrag.retrieval.textsearch import highlight

            snip = safe(h.row["snippet"]) if not bold else h.row["snippet"]
            if bold:
                snip = safe(highlight(snip, h.row.get("match_spans") or [], "\x00", "\x01"))
                snip = snip.replace("\\x00", "\033[1m").replace("\\x01", "\033[0m")
            print(f"       {snip}")
        if h.row.get("matched_terms"):  # the keyword side of the score, shown apart from it
            sim = h.row.get("similarity")
            print(f"       keyword {h.row['keyword']:.2f} ({', '.join(h.row['matched_terms'])})"
                  + (f" · similarity {sim:.4f}" if sim is not None else ""))


def print_classified(rows: list[dict], limit: int, wrote: bool) -> None:
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r["label"])] = counts.get(str(r["label"]), 0) + 1
    for r in rows[:limit]:
        top = ", ".join(f"{lab} {p:.2f}" for lab, p in r["top"])
        print(f"{(r['label'] or '(none)'):<20} {r['score']:.3f}  {display(r['path'])}   [{top}]")
    if len(rows) > limit:
        print(f"... {len(rows) - limit} more (use --json for all)")
    if len(rows) > 1:
        print("counts: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
    if wrote:
        print(f"wrote labels for {len(rows)} items (filter with --label LABEL)")


def print_skipped(sk: list[dict]) -> None:
    if not sk:
        print("no skipped files")
    for r in sk:
        print(f"{display(r['path'])}: {r['reason']}")


def print_info(info: dict) -> None:
    for k, v in info.items():
        if k == "disk_bytes":
            v = f"{v / 1e6:.1f} MB"
        print(f"{k:>16}: {v}")


def print_answer(stream) -> None:
    """Stream an answer to the terminal as it is generated, then its citations and notes."""
    print(f"[{stream.generator_name}]", file=sys.stderr, flush=True)
    for chunk in stream:  # model text: no terminal control sequences (ESC etc.) reach the terminal
        print("".join(ch if ch in "\n\t" or ch.isprintable() else "\ufffd" for ch in chunk), end="", flush=True)
    print()
    res = stream.result
    if res.citations:
        print("\ncited:")
        _print_sources(res.citations)
    uncited = [c for c in res.sent if c.n not in {x.n for x in res.citations}]
    if uncited:
        print("also shown to the model, not cited:")
        _print_sources(uncited)
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)


def _print_sources(sources) -> None:
    for c in sources:
        page = f" page {c.page}" if c.page is not None else ""
        print(f"  [{c.n}] {c.score:.3f}  {display(c.path)}{page}")
