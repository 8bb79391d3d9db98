"""Web UI under load: N simulated users × M requests each against a real `imgrag serve` on 127.0.0.1.

Each user runs a bounded loop (it stops by itself after M requests) cycling through what a person does:
three text searches through Gradio's queue API (POST /gradio_api/call/search, then the event stream),
one gallery thumbnail fetch (the URL the search returned), one original image through imgrag's own
route (/imgrag/image?id=…). Every response is checked (status 200, a non-empty gallery, image bytes);
anything else counts as an error. Prints a table and appends a JSON record to bench/results/results.jsonl.

    .venv/bin/python bench/ui_load.py                     # 20 users × 50 requests, lite model, data/samples
    .venv/bin/python bench/ui_load.py --users 5 --requests 10
    .venv/bin/python bench/ui_load.py --url http://127.0.0.1:7860 --paths-from /path/to/indexed/folder
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _common import CACHE, ROOT, log, pct, record, table  # noqa: E402

QUERIES = ["a cat", "a cup of coffee", "a rocket launch", "a penguin", "a guitar", "a lighthouse", "a red car",
           "fruit on a table", "a musical instrument", "the night sky", "a building", "a dog"]
KINDS = ("search", "search", "search", "thumbnail", "original")


def run_load(base: str, image_ids: list[str], users: int = 20, requests: int = 50,
             timeout: float = 120.0) -> dict[str, Any]:
    """Run the load; returns latencies (s) per kind, error count and messages, wall time."""
    from ui_support import gradio_call, http_get

    lat: dict[str, list[float]] = {k: [] for k in set(KINDS)}
    errors: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(users)

    def user(u: int) -> None:
        last_thumb: str | None = None
        start_gate.wait()
        for i in range(requests):  # bounded: every user stops after `requests`
            kind = KINDS[i % len(KINDS)]
            t0 = time.perf_counter()
            try:
                if kind == "search":
                    q = QUERIES[(u * 7 + i) % len(QUERIES)]
                    out = gradio_call(base, "search", [q, 12, 0, False, "", "", "", "", "all"], timeout=timeout)
                    gal = out[0]
                    if not gal:
                        raise RuntimeError(f"empty gallery for {q!r}")
                    last_thumb = gal[(u + i) % len(gal)]["image"]["url"]
                    ok = True
                elif kind == "thumbnail":
                    url = last_thumb or ""
                    if not url.startswith("http"):
                        url = base + url
                    st, body, hdr = http_get(url, timeout=timeout)
                    ok = st == 200 and body[:3] == b"\xff\xd8\xff"
                    if not ok:
                        raise RuntimeError(f"thumbnail {st}")
                else:
                    iid = image_ids[(u * 13 + i) % len(image_ids)]
                    st, body, hdr = http_get(f"{base}/imgrag/image?id={urllib.parse.quote(iid, safe='')}",
                                             timeout=timeout)
                    if st != 200 or not hdr.get("content-type", hdr.get("Content-Type", "")).startswith("image/"):
                        raise RuntimeError(f"original {st}")
                dt = time.perf_counter() - t0
                with lock:
                    lat[kind].append(dt)
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                with lock:
                    errors.append(f"user {u} request {i} ({kind}): {type(e).__name__}: {e}")

    threads = [threading.Thread(target=user, args=(u,), daemon=True) for u in range(users)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"latencies": lat, "errors": errors, "wall_s": wall, "users": users, "requests": requests}


def summarise(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    allv = [v for vs in res["latencies"].values() for v in vs]
    for kind, vs in [*sorted(res["latencies"].items()), ("all", allv)]:
        if not vs:
            continue
        rows.append({"kind": kind, "n": len(vs), "p50_ms": 1000 * pct(vs, 50), "p99_ms": 1000 * pct(vs, 99),
                     "max_ms": 1000 * max(vs)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--requests", type=int, default=50, help="requests per user (bounded loop)")
    ap.add_argument("--url", help="an already running `imgrag serve` (default: start one on a free port)")
    ap.add_argument("--images", default=str(ROOT / "data" / "samples"), help="folder to index (lite model)")
    ap.add_argument("--paths-from", help="with --url: folder whose images are in that server's index")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)

    from ui_support import Server, build_lite_index

    from imgrag.retrieval.imageio import is_supported

    folder = Path(args.paths_from or args.images).resolve()
    image_ids = sorted(str(p) for p in folder.rglob("*") if p.is_file() and is_supported(str(p)))
    server = None
    if args.url:
        base = args.url.rstrip("/")
    else:
        idx = CACHE / "ui_load_index"
        if not (idx / "imgrag.json").exists():
            log(f"indexing {folder} with the lite model into {idx}")
        build_lite_index(folder, idx)  # incremental: a no-op when up to date
        log("starting imgrag serve")
        server = Server(idx, cache=CACHE / "ui_load_cache")
        base = server.url
        from ui_support import gradio_call

        gradio_call(base, "search", ["warm up", 1, 0, False, "", "", "", "", "all"], timeout=600)  # model loaded
    try:
        log(f"{args.users} users × {args.requests} requests against {base}")
        res = run_load(base, image_ids, args.users, args.requests)
    finally:
        if server is not None:
            server.stop()
    rows = summarise(res)
    total = args.users * args.requests
    table(["request", "n", "p50 ms", "p99 ms", "max ms"],
          [[r["kind"], r["n"], r["p50_ms"], r["p99_ms"], r["max_ms"]] for r in rows],
          title=f"Web UI under load: {args.users} users × {args.requests} requests on 127.0.0.1 — "
                f"{len(res['errors'])} errors of {total}, {total / res['wall_s']:.1f} requests/s overall")
    for e in res["errors"][:10]:
        print("error:", e)
    if not args.no_record:
        record("ui_load", {"rows": rows, "errors": len(res["errors"]), "requests": total,
                           "wall_s": round(res["wall_s"], 2), "requests_per_s": round(total / res["wall_s"], 2)},
               params={"users": args.users, "requests_per_user": args.requests, "images": len(image_ids),
                       "model": "lite", "mix": list(KINDS), "url": "started" if server else "given"})
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
