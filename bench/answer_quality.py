#!/usr/bin/env python3
"""Answer quality of ``imgrag ask`` (issue #15, part 6): citation accuracy, refusal accuracy and the rate of
unsupported sentences, on bench/questions.jsonl over data/samples, offline (lite model, smollm2 generator).

Two collections: ``photos`` (data/samples) and ``photos+pdf`` (the same plus a one-page PDF memo whose text
holds the everyday words questions are made of, "what", "is", "the", "photo", … — the case where keyword
hits used to bypass the no-answer guard).

- citation accuracy: answerable questions (expected images given) answered, not refused, whose answer cites
  at least one image and only expected ones;
- refusal accuracy: unanswerable questions (expected ``"none"``) that are refused (guard, or the answer says
  the images do not show it); false refusals: answerable questions refused;
- unsupported-sentence rate: sentences of non-refused answers (after a generator's fixed preamble) that
  :func:`imgrag.retrieval.queries.grounding.check_sentences` cannot trace to the question or to the text
  evidence of the image they cite (the same check for "before" and "after"); sentences marked
  ``[unverified]`` count as unsupported.

    python bench/answer_quality.py [--settings photos,photos+pdf] [--limit N] [--label before] [--json out.json]

Each run appends one record per setting to bench/results/results.jsonl.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_imgrag_importable, log, record, table  # noqa: E402

ensure_imgrag_importable()

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"
QUESTIONS = ROOT / "bench" / "questions.jsonl"
MEMO = ("Team notes. What is on the agenda this week? Is the photo for the newsletter ready? Which room is free "
        "and when is the meeting? Who has the keys, where are they, and how do we book the hall? There is a lot "
        "to do: the plan is to share the images and pictures of the event with everyone by Friday.")


def load_questions(path: Path = QUESTIONS) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            q = json.loads(line)
            exp = q["expected"]
            q["expected"] = [] if exp == "none" else list(exp)
            out.append(q)
    return out


def build(setting: str, work: Path) -> Path:
    from imgrag.app.cli import main

    paths = [str(SAMPLES)]
    if setting == "photos+pdf":
        from fpdf import FPDF

        d = work / "docs"
        d.mkdir()
        pdf = FPDF(format="A4")
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.set_xy(15, 20)
        pdf.multi_cell(180, 6, MEMO)
        pdf.output(str(d / "team_notes.pdf"))
        paths.append(str(d))
    idx = work / "idx"
    rc = main(["index", *paths, "--model", "lite", "--index", str(idx), "--workers", "1", "--no-progress"])
    if rc != 0:
        raise SystemExit(f"indexing failed ({rc})")
    return idx


def score_one(q: dict, res, items) -> dict:
    from imgrag.retrieval.generators.prompt import says_not_shown
    from imgrag.retrieval.queries.grounding import MARK, check_sentences, split_preamble

    refused = bool(res.no_answer or says_not_shown(res.text) or not res.citations)
    cited = [Path(c.path).name for c in res.citations]
    sentences = unsupported = 0
    if not refused:
        facts = {it.n: it.facts for it in items}
        body = split_preamble(res.text)[1]
        for c in check_sentences(body, q["question"], facts, [c.n for c in res.citations]):
            sentences += 1
            unsupported += (not c.supported) or (MARK.strip() in c.text)
    answerable = bool(q["expected"])
    return {"question": q["question"], "answerable": answerable, "refused": refused, "cited": cited,
            "cite_ok": answerable and not refused and bool(cited) and set(cited) <= set(q["expected"]),
            "sentences": sentences, "unsupported": unsupported, "best": res.best_score, "text": res.text}


def run_setting(setting: str, questions: list[dict], generator: str) -> tuple[dict, list[dict]]:
    from imgrag.retrieval.index import Index
    from imgrag.retrieval.queries.answer import answer

    with tempfile.TemporaryDirectory(prefix="imgrag-aq-") as tmp:
        idx = Index.open(build(setting, Path(tmp)))
        rows = []
        t0 = time.perf_counter()
        for i, q in enumerate(questions):
            s = answer(idx, q["question"], k=8, max_images=4, generator=generator)
            s.text()
            rows.append(score_one(q, s.result, s.items))
            r = rows[-1]
            log(f"[{setting}] {i + 1}/{len(questions)} {'REFUSED' if r['refused'] else ','.join(r['cited'])} "
                f"| {q['question']} -> {r['text'][:160]!r}")
        secs = time.perf_counter() - t0
    ans = [r for r in rows if r["answerable"]]
    una = [r for r in rows if not r["answerable"]]
    sent = sum(r["sentences"] for r in rows)
    fig = {"questions": len(rows), "answerable": len(ans), "unanswerable": len(una),
           "citation_accuracy": sum(r["cite_ok"] for r in ans) / max(1, len(ans)),
           "refusal_accuracy": sum(r["refused"] for r in una) / max(1, len(una)),
           "false_refusals": sum(r["refused"] for r in ans) / max(1, len(ans)),
           "sentences": sent, "unsupported_sentence_rate": (sum(r["unsupported"] for r in rows) / sent) if sent else 0.0,
           "seconds": round(secs, 1)}
    return fig, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", default="photos,photos+pdf")
    ap.add_argument("--questions", type=Path, default=QUESTIONS)
    ap.add_argument("--generator", default="smollm2")
    ap.add_argument("--limit", type=int, default=None, help="first N questions only (a quick look)")
    ap.add_argument("--label", default="", help="a tag stored with the figures (e.g. before / after)")
    ap.add_argument("--json", type=Path, default=None, help="also write figures and per-question rows here")
    a = ap.parse_args(argv)
    qs = load_questions(a.questions)[: a.limit] if a.limit else load_questions(a.questions)
    out, lines = {}, []
    for setting in [s.strip() for s in a.settings.split(",") if s.strip()]:
        fig, rows = run_setting(setting, qs, a.generator)
        out[setting] = {"figures": fig, "rows": rows}
        record("answer_quality", fig, {"setting": setting, "label": a.label, "model": "lite", "generator": a.generator,
                                       "questions": str(a.questions.relative_to(ROOT) if a.questions.is_relative_to(ROOT)
                                                        else a.questions)})
        lines.append([setting, f"{fig['citation_accuracy']:.1%}", f"{fig['refusal_accuracy']:.1%}",
                      f"{fig['false_refusals']:.1%}", f"{fig['unsupported_sentence_rate']:.1%}",
                      f"{fig['sentences']}", f"{fig['seconds']:.0f}"])
    table(["collection", "citation acc.", "refusal acc.", "false refusals", "unsupported sent.", "sentences", "s"],
                lines, title=f"answer quality ({a.label or 'current code'}; lite + {a.generator}, {len(qs)} questions)")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
