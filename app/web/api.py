"""The JSON HTTP API beside the web UI (``/api/v1``), for scripts and other front ends.

Routes (OpenAPI description at ``/api/v1/openapi.json``):

- ``GET  /search?q=…`` — text search with filters (``path`` glob, ``after``/``before`` dates, ``label``,
  ``type`` photo/page), ``k``, ``mode`` (auto/vector/text/hybrid), ``min_score``;
- ``POST /search/image`` — multipart ``file`` (an image), same filters and ``k``;
- ``POST /ask`` — ``{"question": …}`` → answer text, citations, ``refused``; ``"stream": true`` answers as
  ``text/event-stream`` (``chunk`` events, then one ``result``);
- ``POST /classify`` — labels (+ templates) over item ids; ``POST /classify/image`` — over an upload. Never writes;
- ``GET  /info`` — the index, its model, folders with counts, the running job;
- ``GET  /media/{original|thumb|preview}?id=ID`` — the same hash-checked serving as the UI's ``/imgrag/*``.

It answers with ids, display-form paths, scores and metadata (:mod:`.api_models`), never gallery tuples or
HTML; every error is ``{"error": "one line"}`` with a status code. The same login as the UI guards it (the
UI's session cookie, or HTTP Basic with the ``--auth`` credentials), the same upload limits apply, and only
indexed files whose bytes still match their hash are ever read (:mod:`.files`).
"""

# no `from __future__ import annotations`: FastAPI reads the route functions' annotations at runtime.

import base64
import binascii
import hmac
import json
import os
import tempfile
from typing import Any, Callable, Iterator, Literal, Optional
from urllib.parse import quote

from imgrag.app.web.api_models import (AskIn, AskOut, ClassifiedOut, ClassifyIn, ClassifyOut, ErrorOut, InfoOut,
                                       ItemOut, LabelScore, SearchOut)
from imgrag.app.web.backend import Backend, display_name, make_filters
from imgrag.app.web.files import NotServable
from imgrag.retrieval.errors import BadQueryError, ImgragError, IndexNotFoundError
from imgrag.retrieval.paths import display

MODES = ("auto", "vector", "text", "hybrid")
_ERRORS = {400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 404: {"model": ErrorOut},
           413: {"model": ErrorOut}, 503: {"model": ErrorOut}}


class ApiError(ImgragError):
    """An API refusal with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_of(e: Exception) -> int:
    """HTTP status for an imgrag error: bad input 400, not an indexed item 404, no index / model 503."""
    if isinstance(e, ApiError):
        return e.status
    if isinstance(e, NotServable):
        return 404
    if isinstance(e, BadQueryError):
        return 413 if "too large" in str(e) else 400
    if isinstance(e, IndexNotFoundError):
        return 503
    if type(e).__name__ == "IndexLockedError":
        return 409
    return 503


def one_line(e: Exception) -> str:
    s = " ".join(str(e).split()) or type(e).__name__
    return s if len(s) <= 500 else s[:499] + "…"


def media_url(kind: str, item_id: str) -> str:
    return f"/api/v1/media/{kind}?id={quote(item_id, safe='')}"


def item_out(item_id: str, path: str, row: dict[str, Any], score: Optional[float]) -> ItemOut:
    taken = row.get("taken_at")
    page = row.get("page")
    return ItemOut(
        id=item_id, path=display(path), name=display_name(path), kind="page" if page else "photo", page=page,
        score=None if score is None else round(float(score), 6),
        similarity=_round(row.get("similarity")), keyword=_round(row.get("keyword")),
        matched_terms=list(row.get("matched_terms") or ()), snippet=row.get("snippet") or "",
        taken_at=taken.isoformat() if hasattr(taken, "isoformat") else None, width=row.get("width"),
        height=row.get("height"), size=row.get("size"), label=row.get("label"),
        label_score=_round(row.get("label_score")), copies=[display(str(c)) for c in (row.get("copies") or ())],
        thumb_url=media_url("thumb", item_id), preview_url=media_url("preview", item_id),
        original_url=media_url("preview" if page else "original", item_id))  # a page: its own, rendered


def _round(v: Any) -> Optional[float]:
    return None if v is None else round(float(v), 6)


def text_hits(backend: Backend, q: str, k: int, mode: str, filters, min_score: Optional[float]):
    """Search hits for a text query (no thumbnails rendered: the API links to them instead)."""
    from imgrag.retrieval.queries.hybrid import search_documents
    from imgrag.retrieval.queries.search import search

    if not (q or "").strip():
        raise BadQueryError("give a query: ?q=a dog on a beach")
    if mode not in MODES:
        raise BadQueryError(f"mode must be one of {', '.join(MODES)}")
    k = backend._check_k(k)
    terms = backend._terms(q)  # image:PATH terms must name indexed images
    backend.embedder()
    index = backend.index()
    plain = len(terms) == 1 and terms[0].kind == "text" and terms[0].weight == 1.0
    if plain and (mode != "auto" or index.store.has_text()):
        return search_documents(index, str(terms[0].value), k=k, mode="hybrid" if mode == "auto" else mode,
                                filters=filters, min_score=min_score)
    if mode not in ("auto", "vector"):
        raise BadQueryError(f"mode {mode} takes plain text only (no image: terms or weights)")
    return search(index, terms, k=k, filters=filters, min_score=min_score)


def check_basic(header: str, auth: tuple[str, str]) -> bool:
    scheme, _, b64 = (header or "").partition(" ")
    if scheme.lower() != "basic" or not b64:
        return False
    try:
        user, sep, pw = base64.b64decode(b64.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    ok_user = hmac.compare_digest(user.encode(), auth[0].encode())
    ok_pw = hmac.compare_digest(pw.encode(), auth[1].encode())
    return bool(sep) and ok_user and ok_pw


def create_api(backend: Backend, auth: Optional[tuple[str, str]] = None,
               cookie_ok: Optional[Callable[[Any], bool]] = None):
    """The API as a FastAPI sub-application (mount it at ``/api/v1``)."""
    from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    api = FastAPI(title="imgrag HTTP API", version="1", docs_url=None, redoc_url=None, openapi_url="/openapi.json",
                  description=__doc__.split("\n\n", 1)[1] if __doc__ else "")

    def error(status: int, msg: str, headers: Optional[dict] = None) -> JSONResponse:
        return JSONResponse({"error": msg}, status_code=status, headers=headers)

    @api.exception_handler(ImgragError)
    def _imgrag_error(request, e: ImgragError):
        return error(status_of(e), one_line(e))

    @api.exception_handler(RequestValidationError)
    def _invalid(request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("body", "query"))
        return error(422 if first.get("type") != "json_invalid" else 400,
                     f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @api.exception_handler(StarletteHTTPException)
    def _http(request, e: StarletteHTTPException):
        return error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @api.exception_handler(Exception)
    def _internal(request, e: Exception):  # pragma: no cover - a bug: one line to the client, the log has more
        import logging

        logging.getLogger("imgrag.ui").exception("API error")
        return error(500, f"internal error: {type(e).__name__}")

    def login(request: Request) -> None:
        if auth is None:
            return
        if check_basic(request.headers.get("authorization", ""), auth):
            return
        if cookie_ok is not None and cookie_ok(request):
            return
        raise StarletteHTTPException(401, "login required (HTTP Basic with the server's --auth, or the UI's "
                                          "session cookie)", headers={"WWW-Authenticate": 'Basic realm="imgrag"'})

    guarded = [Depends(login)]
    limit = backend.config.max_upload_bytes

    def upload_to_file(request: Request, file: Any) -> str:
        """The upload in a temp file, refused over the byte limit without reading more than limit + 1 bytes."""
        n = request.headers.get("content-length")
        if n and n.isdigit() and int(n) > limit + 64 * 1024:
            raise ApiError(413, f"upload too large: {int(n) / 1e6:.1f} MB > {limit / 1e6:.0f} MB limit")
        data = file.file.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, f"upload too large: over the {limit / 1e6:.0f} MB limit")
        if not data:
            raise BadQueryError("the uploaded file is empty")
        fd, p = tempfile.mkstemp(prefix="imgrag-api-", suffix=".img")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return p

    def with_upload(request: Request, file: Any, fn: Callable[[str], Any]) -> Any:
        p = upload_to_file(request, file)
        try:
            return fn(p)
        finally:
            os.unlink(p)

    @api.get("/search", response_model=SearchOut, responses=_ERRORS, dependencies=guarded,
             summary="Search by text")
    def search_text(q: str = Query(..., max_length=2000, description="what to look for; `image:ID` terms allowed"),
                    k: int = Query(12, description="number of results"), mode: Literal["auto", "vector", "text", "hybrid"] = "auto",
                    min_score: Optional[float] = Query(None, description="hide results scored below this"),
                    path: Optional[str] = Query(None, description="glob over the whole path, `*` spans folders"),
                    after: Optional[str] = Query(None, description="taken on or after, YYYY-MM-DD"),
                    before: Optional[str] = Query(None, description="taken on or before, YYYY-MM-DD"),
                    label: Optional[str] = Query(None, description="stored label (classify --write)"),
                    type: Optional[Literal["photo", "page"]] = Query(None, description="whole images or document "
                                                                                       "pages")):  # noqa: A002
        filters = make_filters(path, after, before, label, type)
        hits = text_hits(backend, q, k, mode, filters, min_score)
        res = [item_out(h.id, h.path, h.row, h.score) for h in hits]
        return SearchOut(query=q, mode=mode, k=k, count=len(res), results=res)

    @api.post("/search/image", response_model=SearchOut, responses=_ERRORS, dependencies=guarded,
              summary="Search by an uploaded image")
    def search_image(request: Request, file: UploadFile = File(..., description="the query image"),
                     k: int = Form(12), min_score: Optional[float] = Form(None), path: Optional[str] = Form(None),
                     after: Optional[str] = Form(None), before: Optional[str] = Form(None),
                     label: Optional[str] = Form(None),
                     type: Optional[Literal["photo", "page"]] = Form(None)):  # noqa: A002
        from imgrag.app.web.files import load_upload
        from imgrag.retrieval.queries.search import search

        k = backend._check_k(k)
        filters = make_filters(path, after, before, label, type)
        img = with_upload(request, file, lambda p: load_upload(p, limit, backend.config.max_upload_pixels))
        backend.embedder()
        hits = search(backend.index(), img, k=k, filters=filters, min_score=min_score)
        res = [item_out(h.id, h.path, h.row, h.score) for h in hits]
        return SearchOut(query=None, mode="vector", k=k, count=len(res), results=res)

    @api.post("/ask", response_model=AskOut, responses=_ERRORS, dependencies=guarded,
              summary="Ask a question about the images (answer with [n] citations)")
    def ask(body: AskIn):
        from imgrag.app.web.ask_tab import answer_slot

        if not body.question.strip():
            raise BadQueryError("type a question about your images")
        if body.stream:
            return StreamingResponse(_ask_events(body), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        with answer_slot(backend):
            res = None
            for kind, val in backend.ask(body.question, body.k, body.max_images, body.min_score):
                if kind == "result":
                    res = val
        return ask_out(res)

    def _ask_events(body: AskIn) -> Iterator[str]:
        from imgrag.app.web.ask_tab import answer_slot

        try:
            with answer_slot(backend):
                for kind, val in backend.ask(body.question, body.k, body.max_images, body.min_score):
                    if kind == "chunk":
                        yield f"event: chunk\ndata: {json.dumps({'text': val})}\n\n"
                    else:
                        yield f"event: result\ndata: {ask_out(val).model_dump_json()}\n\n"
        except ImgragError as e:
            yield f"event: error\ndata: {json.dumps({'error': one_line(e), 'status': status_of(e)})}\n\n"

    def ask_out(res) -> AskOut:
        def cite(c) -> dict:
            return dict(n=c.n, id=c.id, path=display(c.path), page=c.page, score=round(float(c.score), 6),
                        thumb_url=media_url("thumb", c.id), preview_url=media_url("preview", c.id))

        return AskOut(question=res.question, answer=res.text, refused=bool(res.no_answer),
                      citations=[cite(c) for c in res.citations], sent=[cite(c) for c in res.sent],
                      generator=res.generator, text_only=bool(res.text_only), best_score=_round(res.best_score),
                      notes=list(res.notes or []))

    def _labels(labels: list[str]) -> str:
        if any("\n" in x or "," in x for x in labels):
            raise BadQueryError("a label may not contain a comma or a line break")
        return "\n".join(labels)

    @api.post("/classify", response_model=ClassifyOut, responses=_ERRORS, dependencies=guarded,
              summary="Zero-shot labels for indexed items (never written into the index)")
    def classify(body: ClassifyIn):
        rows = backend.classify_ids(body.ids, _labels(body.labels), "\n".join(body.templates))
        paths = _paths(backend, [r["id"] for r in rows])
        out = [ClassifiedOut(id=r["id"], path=paths.get(r["id"]), label=r["label"], score=round(float(r["score"]), 6),
                             top=[LabelScore(label=lab, score=round(float(s), 6)) for lab, s in r["top"]])
               for r in rows]
        return ClassifyOut(labels=body.labels, results=out)

    @api.post("/classify/image", response_model=ClassifyOut, responses=_ERRORS, dependencies=guarded,
              summary="Zero-shot labels for an uploaded image")
    def classify_image(request: Request, file: UploadFile = File(...),
                       labels: str = Form(..., description="labels, comma- or newline-separated"),
                       templates: str = Form("", description="prompt templates, one per line")):
        probs = with_upload(request, file, lambda p: backend.classify_upload(p, labels, templates))
        top = [LabelScore(label=lab, score=round(float(s), 6)) for lab, s in probs.items()]
        best = top[0] if top else None
        return ClassifyOut(labels=list(probs), results=[ClassifiedOut(label=best.label if best else None,
                                                                      score=best.score if best else 0.0, top=top)])

    @api.get("/info", response_model=InfoOut, responses=_ERRORS, dependencies=guarded, summary="The index")
    def info():
        from imgrag.app.web.folders import folder_counts

        cfg = backend.config
        base = dict(max_upload_bytes=cfg.max_upload_bytes, max_upload_pixels=cfg.max_upload_pixels, max_k=cfg.max_k,
                    job=backend.jobs.status.to_dict())
        if not backend.has_index():
            return InfoOut(index=str(backend.root), items=0, **base)
        d = backend.info()
        folders = [{"path": display(p), "items": n} for p, n in folder_counts(backend)]
        return InfoOut(index=str(d.get("index")), model=d.get("model"), items=int(d.get("items") or 0),
                       skipped=int(d.get("skipped") or 0), created_at=str(d.get("created_at") or "") or None,
                       generator=backend.generator_name(), folders=folders, **base)

    media_headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"}

    @api.get("/media/original", dependencies=guarded, responses=_ERRORS,
             summary="The original file of an indexed item (only while its bytes match the indexed hash)")
    def original(id: str = Query(..., max_length=8192)):  # noqa: A002
        data, mime, name = backend.original(id)
        return Response(data, media_type=mime, headers={
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(name, safe='')}",
            "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, max-age=60"})

    @api.get("/media/thumb", dependencies=guarded, responses=_ERRORS, summary="A JPEG thumbnail of an indexed item")
    def thumb(id: str = Query(..., max_length=8192)):  # noqa: A002
        return FileResponse(backend.thumbnail(id), media_type="image/jpeg", headers=media_headers)

    @api.get("/media/preview", dependencies=guarded, responses=_ERRORS,
             summary="A large JPEG of an indexed item (a document page rendered)")
    def preview(id: str = Query(..., max_length=8192)):  # noqa: A002
        from imgrag.app.web.collection import preview as preview_of

        return FileResponse(preview_of(backend, id), media_type="image/jpeg", headers=media_headers)

    return api


def _paths(backend: Backend, ids: list[str]) -> dict[str, str]:
    if not ids:
        return {}
    t = backend.index().store.get(ids, columns=["id", "path"])
    return {i: display(p) for i, p in zip(t["id"].to_pylist(), t["path"].to_pylist())}
