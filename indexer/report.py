"""What an indexing run reports, the same for both engines: progress while it runs, the report at the end."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Progress:
    done: int
    total: int
    embedded: int
    reused: int
    skipped: int
    elapsed_s: float


@dataclass
class IndexReport:
    roots: list[str]
    scanned: int = 0
    unchanged: int = 0
    new_or_changed: int = 0
    embedded: int = 0
    reused: int = 0  # renamed/duplicated/touched files whose vector was reused by content hash
    deleted: int = 0
    skipped: list[dict] = field(default_factory=list)  # skips found in this run (with reasons)
    total_items: int = 0
    interrupted: bool = False
    seconds: dict[str, float] = field(default_factory=dict)  # stage → seconds
    documents: int = 0  # new/changed PDFs planned in this run
    pages: int = 0  # their pages
    ocr_pages: int = 0  # pages whose text came from OCR
    pages_without_text: int = 0  # pages with no text layer left un-OCR'd (no OCR engine)

    @property
    def images_per_s(self) -> float:
        t = self.seconds.get("total", 0.0)
        return (self.embedded + self.reused) / t if t > 0 else 0.0

    def to_dict(self) -> dict:
        return {"roots": self.roots, "scanned": self.scanned, "unchanged": self.unchanged,
                "new_or_changed": self.new_or_changed, "embedded": self.embedded, "reused": self.reused,
                "deleted": self.deleted, "skipped": len(self.skipped), "total_items": self.total_items,
                "interrupted": self.interrupted, "images_per_s": round(self.images_per_s, 2),
                "documents": self.documents, "pages": self.pages, "ocr_pages": self.ocr_pages,
                "pages_without_text": self.pages_without_text,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}
