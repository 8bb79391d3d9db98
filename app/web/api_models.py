"""Typed response and request bodies of the JSON HTTP API (:mod:`.api`); they make its ``/openapi.json``.

Paths are in display form (:func:`imgrag.retrieval.paths.display`: a byte that is not UTF-8 as ``\\xe9``);
``id`` is the stored item id, the only thing the media routes accept.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field


class ErrorOut(BaseModel):
    error: str = Field(description="one line saying what went wrong and what to do")


class ItemOut(BaseModel):
    id: str = Field(description="the item's id; pass it to /media/* and as `ids` to /classify")
    path: str = Field(description="the file's path, display form")
    name: str
    kind: Literal["photo", "page"] = Field(description="a whole image file, or one page of a document")
    page: Optional[int] = Field(None, description="1-based page number of a document page")
    score: Optional[float] = Field(None, description="the shown relevance (what min_score cuts)")
    similarity: Optional[float] = Field(None, description="cosine similarity to the query")
    keyword: Optional[float] = Field(None, description="keyword match in 0–1 (page or OCR text)")
    matched_terms: list[str] = []
    snippet: str = Field("", description="page text around the query's words")
    taken_at: Optional[str] = Field(None, description="EXIF capture time, ISO 8601")
    width: Optional[int] = None
    height: Optional[int] = None
    size: Optional[int] = Field(None, description="bytes on disk")
    label: Optional[str] = Field(None, description="label written by classify --write")
    label_score: Optional[float] = None
    copies: list[str] = Field([], description="other paths with the same bytes (display form)")
    thumb_url: str
    preview_url: str
    original_url: str = Field(description="the file itself; for a document page, that page rendered (as preview_url)")


class SearchOut(BaseModel):
    query: Optional[str] = None
    mode: str
    k: int
    count: int
    results: list[ItemOut]


class CitationOut(BaseModel):
    n: int = Field(description="the [n] the answer text uses")
    id: str
    path: str
    page: Optional[int] = None
    score: float
    thumb_url: str
    preview_url: str


class AskIn(BaseModel):
    question: str = Field(max_length=2000)
    k: int = Field(8, ge=1, le=50, description="images retrieved")
    max_images: int = Field(4, ge=1, le=8, description="images sent to the model")
    min_score: Optional[float] = Field(None, description="no-answer guard threshold (default per model)")
    stream: bool = Field(False, description="answer as text/event-stream: `chunk` events, then `result`")


class AskOut(BaseModel):
    question: str
    answer: str
    refused: bool = Field(description="true when no image matched well enough and no model was asked")
    citations: list[CitationOut] = Field(description="the images the answer cites")
    sent: list[CitationOut] = Field(description="the images given to the model")
    generator: str
    text_only: bool = Field(description="the model read text evidence only, not pixels")
    best_score: Optional[float] = None
    notes: list[str] = []


class ClassifyIn(BaseModel):
    labels: list[str] = Field(min_length=2, max_length=200)
    templates: list[str] = Field([], max_length=100, description="prompt templates with {} (default: imgrag's)")
    ids: list[str] = Field(min_length=1, max_length=1000, description="item ids (e.g. from /search)")


class LabelScore(BaseModel):
    label: str
    score: float


class ClassifiedOut(BaseModel):
    id: Optional[str] = None
    path: Optional[str] = None
    label: Optional[str] = Field(None, description="best label, or null when none passed its threshold")
    score: float
    top: list[LabelScore]


class ClassifyOut(BaseModel):
    labels: list[str]
    written: bool = Field(False, description="always false: the API never writes labels into the index")
    results: list[ClassifiedOut]


class FolderOut(BaseModel):
    path: str
    items: int


class InfoOut(BaseModel):
    index: str
    model: Optional[str] = None
    items: int
    skipped: int = 0
    created_at: Optional[str] = None
    generator: Optional[str] = None
    folders: list[FolderOut] = []
    job: dict[str, Any] = {}
    max_upload_bytes: int
    max_upload_pixels: int
    max_k: int
