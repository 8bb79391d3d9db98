"""Helpers for the web UI tests (tests/test_ui*.py) and bench/ui_load.py: corpora, a real `imgrag serve`
subprocess on a free 127.0.0.1 port, and a minimal client for Gradio's HTTP API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"
VENV_BIN = Path(sys.executable).parent
#: a file name that is also an HTML/JS injection attempt (valid on Linux: no '/')
XSS_NAME = "<img src=x onerror=\"window.__xss=1\">&lt;b&gt;.png"

#: sample images for the lite-model corpus (sub-folder/name): few enough to index in under a minute
LITE_SAMPLES = ["animals/cat_chelsea.jpg", "food/coffee_cup.jpg", "space/rocket_launch.jpg", "animals/penguin.png",
                "music/guitar.png", "buildings/lighthouse.png", "food/teapot.png", "vehicles/bus.png",
                "plants/sunflower.png", "sports/soccer_ball.png"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exif_date(date: str) -> bytes:
    """EXIF block with DateTimeOriginal ``YYYY:MM:DD HH:MM:SS``."""
    from PIL import Image

    ex = Image.Exif()
    ex.get_ifd(0x8769)[0x9003] = date
    return ex.tobytes()


def make_lite_corpus(folder: Path) -> Path:
    """Sample photos/clip art, two EXIF-dated JPEGs, a file named like HTML, and one broken file."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for rel in LITE_SAMPLES:
        shutil.copy(SAMPLES / rel, folder / Path(rel).name)
    dated = folder / "dated"
    dated.mkdir(exist_ok=True)
    Image.open(SAMPLES / "plants/daisy.png").convert("RGB").save(dated / "daisy_2019.jpg", quality=90,
                                                                  exif=exif_date("2019:05:01 10:00:00"))
    Image.open(SAMPLES / "food/apple.png").convert("RGB").save(dated / "apple_2021.jpg", quality=90,
                                                                exif=exif_date("2021:07:15 12:30:00"))
    shutil.copy(SAMPLES / "animals/owl.png", folder / XSS_NAME)
    (folder / "broken.jpg").write_text("this is not an image\n")
    return folder


def build_lite_index(images: Path, index: Path, timeout: float = 600) -> None:
    r = subprocess.run([str(VENV_BIN / "imgrag"), "index", str(images), "--model", "lite", "--index", str(index),
                        "--workers", "0", "--no-progress"], capture_output=True, text=True, timeout=timeout,
                       env=serve_env())
    assert r.returncode == 0, r.stderr


def serve_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


class Server:
    """``imgrag serve`` in a subprocess; ``url`` is ready when the constructor returns."""

    def __init__(self, index: Path, *args: str, cache: Path, host: str = "127.0.0.1", timeout: float = 240,
                 log: Path | None = None) -> None:
        self.port = free_port()
        self.host = host
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log or (cache / f"serve-{self.port}.log")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        cmd = [str(VENV_BIN / "imgrag"), "serve", "--index", str(index), "--host", host, "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=serve_env(XDG_CACHE_HOME=str(cache)), start_new_session=True)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"imgrag serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/imgrag/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"imgrag serve did not start in {timeout}s:\n{self.output()}")
            time.sleep(0.5)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def http_get(url: str, timeout: float = 60, headers: dict | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def raw_get(host: str, port: int, target: str, timeout: float = 30) -> tuple[int, bytes]:
    """GET with the request target sent byte-for-byte (no client-side normalisation of ``../``)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode("latin-1"))
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def gradio_call(base: str, api_name: str, data: list, timeout: float = 120) -> list:
    """Call a Gradio endpoint through its queue API (POST, then read the event stream); return the output."""
    req = urllib.request.Request(f"{base}/gradio_api/call/{api_name}", data=json.dumps({"data": data}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        event_id = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(f"{base}/gradio_api/call/{api_name}/{event_id}", timeout=timeout) as r:
        event, out = None, None
        for raw in r:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                payload = line[5:].strip()
                if event == "complete":
                    out = json.loads(payload)
                elif event == "error":
                    raise RuntimeError(f"{api_name} failed: {payload}")
    if out is None:
        raise RuntimeError(f"{api_name}: no result")
    return out
