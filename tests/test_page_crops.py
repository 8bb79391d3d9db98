"""High-resolution crops of document pages in answers: locating the question's words on a page, the crop
that reaches the generator (region, pixel density, image budget, notes), and the backends that send it.

PDFs are generated with fpdf2 with a word printed in small type at a known place; indexing uses the
deterministic fake embedder; the generators are a recording :class:`Generator` subclass, the real
Anthropic request builder and tiny random-init LLaVA / Idefics models (tests/tiny_vlm.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from fakes import FakeEmbedder
from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.retrieval.generators.base import Crop, EvidenceItem, Generator
from imgrag.retrieval.generators.prompt import ImageSlot, build_prompt
from imgrag.retrieval.index import Index
from imgrag.retrieval.pagecrop import locate, render_crop
from imgrag.retrieval.queries.answer import answer


def pdf_tools():
    """fpdf2 writes the test PDFs, pypdfium2 reads them: skipped only in the tests that make a PDF, not
    in the whole module (the generator tests below need neither)."""
    pytest.importorskip("pypdfium2")
    return pytest.importorskip("fpdf")


A4 = (210.0, 297.0)  # mm
FILLER = "General information about the company, its history and its many departments. " * 14
SECRET = "Invoice total: 4711 zorbleflux"
SECRET_XY = (140.0, 250.0)  # mm from the top left
SECRET_PT = 5.0  # font size: small print


def write_pdf(path: Path, pages: list[bool]) -> tuple[Path, tuple[float, float, float, float]]:
    """A4 pages of 10-pt filler; pages flagged True also carry SECRET in 5-pt type at SECRET_XY.
    Returns the path and SECRET's box as page fractions (left, top, right, bottom)."""
    pdf = pdf_tools().FPDF(format="A4")
    pdf.set_auto_page_break(False)
    box = None
    for secret in pages:
        pdf.add_page()
        pdf.set_font("helvetica", size=10)
        pdf.set_xy(15, 20)
        pdf.multi_cell(180, 4.5, FILLER)
        if secret:
            pdf.set_font("helvetica", size=SECRET_PT)
            w = pdf.get_string_width(SECRET)
            pdf.text(SECRET_XY[0], SECRET_XY[1], SECRET)  # baseline at y
            h = SECRET_PT * 25.4 / 72  # font size in mm
            box = (SECRET_XY[0] / A4[0], (SECRET_XY[1] - h) / A4[1], (SECRET_XY[0] + w) / A4[0],
                   (SECRET_XY[1] + 0.3 * h) / A4[1])
    pdf.output(str(path))
    return path, box


def covers(outer, inner) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


class Recorder(Generator):
    """Records the images it would send (prompt slot order) and cites [1]."""

    name = "recorder"

    def __init__(self, max_images=4, image_size=512, text_only=False):
        self.max_images, self.image_size, self.text_only = max_images, image_size, text_only
        self.items: list[EvidenceItem] = []
        self.images: list[Image.Image] = []

    def stream(self, question, items):
        self.items = list(items)
        p = build_prompt(question, items, text_only=self.text_only)
        self.images = [] if self.text_only else p.images(items)
        yield "The total is 4711 [1]."


def make_index(tmp_path: Path, docs: Path) -> Index:
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store="lancedb")
    build_index(idx, [docs], IndexOptions(workers=0, batch_size=8))
    return Index.open(tmp_path / "idx", embedder=FakeEmbedder())


# ------------------------------------------------------------------------------------------------
# locating
# ------------------------------------------------------------------------------------------------
def test_locate_finds_the_question_words_on_a_text_page(tmp_path):
    pdf, box = write_pdf(tmp_path / "a.pdf", [True])
    r = locate(str(pdf), 1, "What is the invoice total for zorbleflux?")
    assert r is not None and r.how == "question words"
    assert set(r.words) == {"invoice", "total", "zorbleflux"}
    assert covers(r.box, box), (r.box, box)
    assert r.box[2] - r.box[0] == pytest.approx(0.5) and r.box[3] - r.box[1] == pytest.approx(0.35)
    assert locate(str(pdf), 1, "Where is the quokka?") is None  # no question word on the page: no crop
    assert locate(str(pdf), 1, "the and for") is None  # nothing but stop words
    assert locate(str(pdf), 2, "invoice") is None  # no such page
    assert locate(str(tmp_path / "missing.pdf"), 1, "invoice") is None


def test_crop_is_the_region_at_a_higher_pixel_density(tmp_path):
    pdf, box = write_pdf(tmp_path / "a.pdf", [True])
    r = locate(str(pdf), 1, "zorbleflux")
    img, dpi = render_crop(str(pdf), 1, r.box, 512)
    assert max(img.size) in (511, 512, 513)
    page_pt_w = A4[0] / 25.4 * 72
    page_view_density = 512 / (A4[1] / 25.4 * 72)  # the page view: 512 px on the long side
    crop_density = img.width / ((r.box[2] - r.box[0]) * page_pt_w)
    assert crop_density > 2.5 * page_view_density
    # the secret's ink is where the crop box says it is, and nowhere else in the crop's lower half
    a = np.asarray(img.convert("L"))
    fx = lambda x: int((x - r.box[0]) / (r.box[2] - r.box[0]) * img.width)  # noqa: E731
    fy = lambda y: int((y - r.box[1]) / (r.box[3] - r.box[1]) * img.height)  # noqa: E731
    inside = a[fy(box[1]):fy(box[3]) + 1, fx(box[0]):fx(box[2]) + 1]
    assert (inside < 128).sum() > 100  # the glyphs are there
    mask = np.ones_like(a, bool)
    mask[fy(box[1]) - 2:fy(box[3]) + 3, fx(box[0]) - 2:fx(box[2]) + 3] = False
    assert (a[mask] < 128).sum() == 0  # nothing else: the filler is outside the crop


def test_image_only_page_with_ocr_text_gets_its_densest_region(tmp_path):
    pdf_tools()
    page = Image.new("RGB", (1240, 1754), "white")
    d = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=28)
    for i in range(12):  # a block of text in the lower right quarter only
        d.text((700, 1250 + i * 36), "zorbleflux 4711 total due", fill="black", font=font)
    pdf = tmp_path / "scan.pdf"
    page.save(pdf, "PDF", resolution=150.0)
    ocr_text = "zorbleflux 4711 total due " * 12
    r = locate(str(pdf), 1, "zorbleflux total?", page_text=ocr_text)
    assert r is not None and r.how == "densest region"
    block = (700 / 1240, 1250 / 1754, 1150 / 1240, 1690 / 1754)
    cx, cy = (r.box[0] + r.box[2]) / 2, (r.box[1] + r.box[3]) / 2
    assert block[0] < cx < block[2] and block[1] < cy < block[3], r.box
    assert locate(str(pdf), 1, "zorbleflux", page_text=None) is None  # no text known: no crop
    assert locate(str(pdf), 1, "quokka", page_text=ocr_text) is None  # the page's text lacks the words


# ------------------------------------------------------------------------------------------------
# the answer flow
# ------------------------------------------------------------------------------------------------
def test_answer_sends_page_and_crop_of_the_question_words(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    pdf, box = write_pdf(docs / "ledger.pdf", [False, True, False])
    idx = make_index(tmp_path, docs)
    gen = Recorder(max_images=4, image_size=512)
    res = answer(idx, "What is the zorbleflux invoice total?", k=3, generator=gen)
    res.text()
    top = gen.items[0]
    assert (top.path, top.page) == (str(pdf), 2)
    assert len(top.crops) == 1 and all(not it.crops for it in gen.items[1:])
    crop = top.crops[0]
    assert isinstance(crop, Crop) and crop.how == "question words" and covers(crop.box, box)
    # what the generator sends: page 2, its crop, then the other pages — 4 images = the budget
    assert len(gen.images) == 4 and gen.images[0] is top.image and gen.images[1] is crop.image
    page_density = max(top.image.size) / max(A4)
    crop_density = crop.image.width / ((crop.box[2] - crop.box[0]) * A4[0])
    assert crop_density > 2.5 * page_density
    notes = " ".join(res.result.notes)
    assert "high-resolution crop" in notes and "'zorbleflux'" in notes and "ledger.pdf page 2" in notes
    prompt = build_prompt("q", gen.items)
    assert [(p.n, p.sub) for p in prompt.parts if isinstance(p, ImageSlot)] == [(1, 0), (1, 1), (2, 0), (3, 0)]
    assert "[1] zoomed detail 1 of the same page" in prompt.text()


def test_crops_stay_within_the_image_budget(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    write_pdf(docs / "ledger.pdf", [True, True, True, True])
    idx = make_index(tmp_path, docs)
    q = "What is the zorbleflux invoice total?"

    full = Recorder(max_images=3)  # budget full with pages: the lowest-ranked page makes room for one crop
    r = answer(idx, q, k=4, generator=full)
    r.text()
    assert len(full.images) == 3 and [len(it.crops) for it in full.items] == [1, 0]
    assert len(r.result.sent) == 2 and len(r.result.dropped) == 2
    assert any("to make room in the image budget" in n for n in r.result.notes)

    roomy = Recorder(max_images=8)  # room for every page and every crop
    r = answer(idx, q, k=4, max_images=8, generator=roomy)
    r.text()
    assert len(roomy.images) == 8 and all(len(it.crops) == 1 for it in roomy.items)

    two = Recorder(max_images=2)  # a budget of 2: pages win, no crop
    r = answer(idx, q, k=4, generator=two)
    r.text()
    assert len(two.images) == 2 and not any(it.crops for it in two.items)
    assert not any("crop" in n for n in r.result.notes)

    off = Recorder(max_images=8)
    answer(idx, q, k=4, max_images=8, generator=off, crops=False).text()
    assert len(off.images) == 4 and not any(it.crops for it in off.items)

    blind = Recorder(max_images=8, text_only=True)  # a text-only generator sees no pixels: no crops
    answer(idx, q, k=4, max_images=8, generator=blind).text()
    assert not any(it.crops for it in blind.items)


# ------------------------------------------------------------------------------------------------
# backends send the crop after its page
# ------------------------------------------------------------------------------------------------
def _item_with_crop() -> EvidenceItem:
    page = Image.new("RGB", (40, 56), (200, 30, 30))
    crop = Crop(Image.new("RGB", (48, 48), (30, 30, 200)), (0.5, 0.6, 1.0, 0.95), 300.0, "question words")
    return EvidenceItem(1, "/d/a.pdf#page=2", "/d/a.pdf", 0.9, 2, page, {"file": "a.pdf", "page": "2"}, [crop])


def test_anthropic_request_carries_the_crop_after_its_page(monkeypatch):
    import base64
    import io

    from imgrag.retrieval.generators.api import AnthropicGenerator

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    body = AnthropicGenerator("claude-test").request_body("What is the total?", [_item_with_crop()])
    imgs = [c for c in body["messages"][0]["content"] if c["type"] == "image"]
    assert len(imgs) == 2
    sizes = [Image.open(io.BytesIO(base64.b64decode(c["source"]["data"]))).size for c in imgs]
    assert sizes == [(40, 56), (48, 48)]


@pytest.mark.parametrize("arch", ["llava", "idefics"])
def test_tiny_vlm_gets_one_image_per_slot_including_the_crop(arch, tmp_path):
    import tiny_vlm
    from imgrag.retrieval.generators import load_generator

    gen = load_generator(f"hf:{tiny_vlm.BUILDERS[arch](tmp_path / arch)}", device="cpu")
    gen.max_new_tokens = 4
    tid = gen.image_token_id()
    it = _item_with_crop()
    plain = EvidenceItem(1, it.id, it.path, it.score, it.page, it.image, dict(it.facts))
    one = gen.build_inputs("What is the total?", [plain])
    two = gen.build_inputs("What is the total?", [it])
    n1, n2 = int((one["input_ids"] == tid).sum()), int((two["input_ids"] == tid).sum())
    assert n1 > 0 and n2 == 2 * n1  # page + crop: two images' worth of tokens
    assert isinstance(gen.generate("What is the total?", [it]), str)
