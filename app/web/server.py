"""The web UI's server (``imgrag serve``): Gradio Blocks mounted on a FastAPI app with imgrag's own media routes.

- ``GET /imgrag/thumb?id=ID`` — a cached JPEG thumbnail of an indexed item;
- ``GET /imgrag/image?id=ID`` — the original, only if ``ID`` is an indexed item whose file still has
  the indexed content hash. Anything else is a 404; nothing else on disk is reachable.
- ``GET /imgrag/preview?id=ID`` — the viewer's large JPEG (a photo, or a document page rendered), same checks.

Gallery thumbnails come from the thumbnail cache folder (registered as Gradio static files; it only
ever holds thumbnails of indexed items). The page loads nothing from the network: analytics are off (see
the package's ``__init__``) and the theme uses fonts bundled with Gradio or the system's.
"""

# no `from __future__ import annotations` here: FastAPI reads the route functions' annotations (Request,
# query parameters) at runtime, and those types are imported inside create_app.

import os
import socket
import sys
import threading
from typing import Any
from urllib.parse import quote

from imgrag.app.web.backend import Backend, UIConfig
from imgrag.app.web.files import NotServable
from imgrag.app.web.collection import preview as preview_of
from imgrag.app.web.html import CSS
from imgrag.app.web.layout import build_blocks
from imgrag.app.web.viewer import head_html
from imgrag.app.web.map_tab import head_html as map_head_html
from imgrag.retrieval.errors import ImgragError

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def create_app(backend: Backend, auth: tuple[str, str] | None = None):
    """FastAPI app: imgrag's media routes plus the Gradio UI mounted at ``/``."""
    import gradio as gr
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, PlainTextResponse, Response
    from starlette.routing import Mount

    gr.set_static_paths([str(backend.thumbs.root)])
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    holder: dict[str, Any] = {}

    def logged_in(request: Request) -> bool:
        g = holder.get("gradio")
        if g is None or (not g.auth and g.auth_dependency is None):
            return True
        token = (request.cookies.get(f"access-token-{g.cookie_id}")
                 or request.cookies.get(f"access-token-unsecure-{g.cookie_id}"))
        return token is not None and g.tokens.get(token) is not None

    def refused(code: int = 404, text: str = "not an indexed image") -> Response:
        return PlainTextResponse(text, status_code=code, headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/imgrag/image")
    def original(request: Request, id: str = ""):  # noqa: A002 - the query parameter's name
        if not logged_in(request):
            return refused(401, "login required")
        try:
            data, mime, name = backend.original(id)
        except NotServable:
            return refused()
        except ImgragError as e:
            return refused(503, str(e))
        return Response(data, media_type=mime, headers={
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(name, safe='')}",
            "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, max-age=60"})

    @app.get("/imgrag/thumb")
    def thumb(request: Request, id: str = ""):  # noqa: A002
        if not logged_in(request):
            return refused(401, "login required")
        try:
            p = backend.thumbnail(id)
        except NotServable:
            return refused()
        except ImgragError as e:
            return refused(503, str(e))
        return FileResponse(p, media_type="image/jpeg", headers={"X-Content-Type-Options": "nosniff",
                                                                 "Cache-Control": "private, max-age=3600"})

    @app.get("/imgrag/preview")
    def preview(request: Request, id: str = ""):  # noqa: A002 - the viewer's large image (photo or document page)
        if not logged_in(request):
            return refused(401, "login required")
        try:
            p = preview_of(backend, id)
        except NotServable:
            return refused()
        except ImgragError as e:
            return refused(503, str(e))
        return FileResponse(p, media_type="image/jpeg", headers={"X-Content-Type-Options": "nosniff",
                                                                 "Cache-Control": "private, max-age=3600"})

    @app.get("/imgrag/health")
    def health():
        return {"ok": True, "index": str(backend.root), "job": backend.jobs.status.to_dict()}

    from imgrag.app.web.api import create_api  # the JSON HTTP API, before the UI's catch-all mount at "/"

    app.mount("/api/v1", create_api(backend, auth=auth, cookie_ok=logged_in))
    demo = build_blocks(backend)
    demo.queue(default_concurrency_limit=4, max_size=256)
    theme = gr.themes.Default(primary_hue="blue",
                              font=["system-ui", "-apple-system", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
                              font_mono=["ui-monospace", "Menlo", "Consolas", "monospace"])
    import inspect

    opts = dict(auth=auth, footer_links=["api", "settings"], run_history=False,
                max_file_size=backend.config.max_upload_bytes, theme=theme, css=CSS, allowed_paths=[],
                head=head_html() + map_head_html(), show_error=True, ssr_mode=False, mcp_server=False)
    accepted = inspect.signature(gr.mount_gradio_app).parameters
    app = gr.mount_gradio_app(app, demo, path="/", **{k: v for k, v in opts.items() if k in accepted})
    for r in app.routes:
        if isinstance(r, Mount):
            holder["gradio"] = r.app
    return app


def parse_auth(spec: str | None) -> tuple[str, str] | None:
    if not spec:
        return None
    user, sep, pw = spec.partition(":")
    if not sep or not user or not pw:
        raise ImgragError("--auth must be USER:PASSWORD (both non-empty)")
    return user, pw


def allowed_roots(host: str, roots: list[str] | None) -> tuple[str, ...] | None:
    """Folders the UI may index: ``--roots`` (checked to exist); None (any) on 127.0.0.1 without it; none at all
    beyond 127.0.0.1 without it (a signed-in user could index, then read, any image on the server)."""
    if roots:
        out = []
        for r in roots:
            p = os.path.realpath(os.path.expanduser(r))
            if not os.path.isdir(p):
                raise ImgragError(f"--roots: not a folder: {r}")
            out.append(p)
        return tuple(out)
    return None if host in LOCAL_HOSTS else ()


def _check_port(host: str, port: int) -> None:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ImgragError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port") from None


def serve(args) -> int:
    """``imgrag serve``: start the UI on ``--host``/``--port`` (127.0.0.1:7860 by default)."""
    import uvicorn

    from imgrag.retrieval.index import default_index_dir

    host = args.host or "127.0.0.1"
    port = int(args.port)
    if not 0 < port < 65536:
        raise ImgragError(f"--port must be between 1 and 65535, got {port}")
    auth = parse_auth(getattr(args, "auth", None))
    if host not in LOCAL_HOSTS:
        print(f"imgrag: warning: listening on {host} makes the UI reachable from other machines: anyone who can "
              "connect can search and view your indexed images and index folders on this machine"
              + ("" if auth else "; protect it with --auth USER:PASSWORD"), file=sys.stderr)
    root = args.index or default_index_dir()  # a folder or an object-storage URI
    cfg = UIConfig(index_root=root, device=args.device, precision=args.precision,
                   generator=getattr(args, "generator", None),
                   max_upload_bytes=int(getattr(args, "max_upload_mb", 25) * 1024 * 1024),
                   max_upload_pixels=int(getattr(args, "max_upload_mp", 50) * 1_000_000),
                   allowed_roots=allowed_roots(host, getattr(args, "roots", None)))
    backend = Backend(cfg)
    if not backend.has_index():
        print(f"imgrag: no index at {backend.root} yet; add a folder in the Index tab (new indexes use the "
              "offline lite model) or run `imgrag index PATH` first", file=sys.stderr)
    _check_port(host, port)
    app = create_app(backend, auth=auth)
    threading.Thread(target=backend.warm_up, name="imgrag-warmup", daemon=True).start()
    watcher = _start_watch(backend, args.watch) if getattr(args, "watch", None) else None
    shown = f"[{host}]" if ":" in host else host
    print(f"imgrag UI: http://{shown}:{port}  (index {backend.root}; Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning" if not getattr(args, "verbose", False) else "info",
                access_log=bool(getattr(args, "verbose", False)))
    if watcher is not None:
        watcher.stop(wait=30)  # ends after its running batch's commit
    return 0


def _start_watch(backend: Backend, paths: list):
    """``serve --watch``: the watcher in a background thread on the server's index. Its batches take the
    writer lock the Index tab's jobs take, so the two never write at once: the watcher waits for a job to
    finish; a job started during a batch is refused with the lock message."""
    from imgrag.indexer.pipeline import IndexOptions
    from imgrag.indexer.watch import WatchOptions, Watcher

    watcher = Watcher(backend._index_for_writing(), paths,
                      WatchOptions(index=IndexOptions(workers=backend.config.index_workers)))
    watcher.start_thread()
    print(f"imgrag: watching {', '.join(watcher.roots)} (new, changed and deleted files are indexed)", flush=True)
    return watcher
