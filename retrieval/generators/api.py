"""API generators: Anthropic Messages (``anthropic:MODEL``) and OpenAI chat completions (``openai:MODEL``);
Gemini (``gemini:MODEL``, :mod:`imgrag.retrieval.generators.gemini`) builds on the same HTTP client.

Plain HTTP with the standard library (no SDK): images are sent as base64 JPEG after resizing to
``image_size`` on the long side, answers stream as server-sent events. Keys come only from the
environment (``ANTHROPIC_API_KEY`` / ``OPENAI_API_KEY``); base URLs can be overridden with
``ANTHROPIC_BASE_URL`` / ``OPENAI_BASE_URL`` (a proxy, a compatible server, or a test server).

Rate limits (429) and transient server errors (500, 502, 503, 504, 529) are retried up to
``max_retries`` times, waiting ``Retry-After`` when the server sends it (capped at 60 s), else an
exponential backoff; other errors (401, 403, 400, 404) fail at once. Error messages say what happened
and what to do, and never contain the key: nothing here logs headers, and every message is scrubbed
of the key before it is raised.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import socket
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, Iterator

from imgrag.retrieval.errors import ModelUnavailableError
from imgrag.retrieval.generators.base import EvidenceItem, Generator, GeneratorError
from imgrag.retrieval.generators.prompt import ImageSlot, build_prompt, slot_image

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

log = logging.getLogger(__name__)

RETRY_STATUS = (429, 500, 502, 503, 504, 529)
MAX_RETRY_AFTER_S = 60.0
DEFAULT_MAX_TOKENS = 512
_HINTS = {
    400: "the request was rejected (bad model name or input?)",
    401: "the API key was rejected: check {env}",
    403: "the API key is not allowed to use this model: check {env} and the model name",
    404: "not found: check the model name and {base_env}",
    413: "the request is too large: use fewer images (--max-images)",
}


def image_to_base64_jpeg(image: "Image.Image", quality: int = 90) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class _HTTPGenerator(Generator):
    provider = "api"
    key_env = ""
    base_env = ""
    default_base = ""
    example_model = ""

    def __init__(self, model: str | None, *, max_retries: int = 3, backoff_s: float = 1.0, timeout_s: float = 120.0,
                 max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        if not model:
            raise GeneratorError(f"generator '{self.provider}:' needs a model name, e.g. {self.provider}:{self.example_model}")
        self.model = model
        self.name = f"{self.provider}:{model}"
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens

    @classmethod
    def from_spec(cls, arg: str, device: str = "auto", precision: str = "auto") -> "_HTTPGenerator":
        return cls(arg or None)  # remote models: device and precision do not apply

    # -- configuration (read at call time, so a key set after start-up is seen) -----------------
    def _key(self) -> str:
        key = os.environ.get(self.key_env, "").strip()
        if not key:
            raise ModelUnavailableError(f"{self.name}: set the {self.key_env} environment variable to your API key")
        return key

    def _base(self) -> str:
        return (os.environ.get(self.base_env) or self.default_base).rstrip("/")

    # -- HTTP ---------------------------------------------------------------------------------------
    def _post_stream(self, url: str, headers: dict[str, str], body: dict[str, Any], key: str) -> Iterator[dict]:
        """POST ``body``; yield parsed SSE ``data`` objects (``{"_event": name, ...}``); retry as documented."""
        data = json.dumps(body).encode("utf-8")
        attempt = 0
        while True:
            req = urllib.request.Request(url, data=data, method="POST",
                                         headers={"content-type": "application/json", "accept": "text/event-stream",
                                                  **headers})
            try:
                resp = urllib.request.urlopen(req, timeout=self.timeout_s)  # noqa: S310 - https or user-set base URL
            except urllib.error.HTTPError as e:
                status, msg, retry_after = e.code, _error_message(e), e.headers.get("retry-after")
                e.close()
                if status in RETRY_STATUS and attempt < self.max_retries:
                    wait = self._wait(attempt, retry_after)
                    log.info("%s: HTTP %s, retrying in %.1fs (%d/%d)", self.name, status, wait, attempt + 1,
                             self.max_retries)
                    time.sleep(wait)
                    attempt += 1
                    continue
                raise GeneratorError(self._scrub(self._describe(status, msg, attempt), key)) from None
            except (urllib.error.URLError, socket.timeout, ConnectionError) as e:
                reason = getattr(e, "reason", e)
                if attempt < self.max_retries:
                    time.sleep(self._wait(attempt, None))
                    attempt += 1
                    continue
                raise GeneratorError(self._scrub(f"{self.name}: cannot reach {self._base()}: {reason} "
                                                 f"(after {attempt + 1} attempts)", key)) from None
            with resp:
                yield from _sse(resp)
            return

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), MAX_RETRY_AFTER_S)
            except ValueError:
                pass
        return min(self.backoff_s * (2 ** attempt) * (1 + 0.25 * random.random()), MAX_RETRY_AFTER_S)

    def _describe(self, status: int, msg: str, attempt: int) -> str:
        hint = _HINTS.get(status, "")
        if status == 429:
            hint = "rate limited: wait and try again, or lower your request rate"
        elif status >= 500:
            hint = "the provider's server failed: try again later"
        hint = hint.format(env=self.key_env, base_env=self.base_env)
        tries = f" after {attempt + 1} attempts" if attempt else ""
        detail = f" — {msg}" if msg else ""
        return f"{self.name}: HTTP {status}{tries}: {hint}{detail}"

    @staticmethod
    def _scrub(text: str, key: str) -> str:
        if key and len(key) >= 4:
            text = text.replace(key, "[redacted]")
        return text

    def _prompt(self, question: str, items: list[EvidenceItem]):
        return build_prompt(question, items, text_only=False)

    def _image_block(self, b64_jpeg: str) -> dict[str, Any]:
        raise NotImplementedError

    def _user_content(self, prompt, items: list[EvidenceItem]) -> list[dict[str, Any]]:
        """The prompt's parts in order: text blocks, and each image slot as this API's base64 JPEG block."""
        by_n = {it.n: it for it in items}
        return [self._image_block(image_to_base64_jpeg(slot_image(by_n, part))) if isinstance(part, ImageSlot)
                else {"type": "text", "text": part} for part in prompt.parts]


class AnthropicGenerator(_HTTPGenerator):
    """Claude through the Messages API (``POST {ANTHROPIC_BASE_URL}/v1/messages``)."""

    provider = "anthropic"
    key_env = "ANTHROPIC_API_KEY"
    base_env = "ANTHROPIC_BASE_URL"
    default_base = "https://api.anthropic.com"
    example_model = "claude-3-5-sonnet-latest"
    api_version = "2023-06-01"
    max_images = 20
    image_size = 1024

    def _image_block(self, b64_jpeg: str) -> dict[str, Any]:
        return {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": b64_jpeg}}

    def request_body(self, question: str, items: list[EvidenceItem]) -> dict[str, Any]:
        p = self._prompt(question, items)
        content = self._user_content(p, items)
        return {"model": self.model, "max_tokens": self.max_tokens, "system": p.system, "stream": True,
                "messages": [{"role": "user", "content": content}]}

    def stream(self, question: str, items: list[EvidenceItem]) -> Iterator[str]:
        key = self._key()
        body = self.request_body(question, items)
        headers = {"x-api-key": key, "anthropic-version": self.api_version}
        for ev in self._post_stream(f"{self._base()}/v1/messages", headers, body, key):
            t = ev.get("type") or ev.get("_event")
            if t == "content_block_delta":
                delta = ev.get("delta") or {}
                if delta.get("type") == "text_delta" and delta.get("text"):
                    yield delta["text"]
            elif t == "error":
                err = ev.get("error") or {}
                raise GeneratorError(self._scrub(f"{self.name}: the stream failed: {err.get('type', 'error')}: "
                                                 f"{err.get('message', '')}", key))
            elif t == "message_stop":
                return


class OpenAIGenerator(_HTTPGenerator):
    """GPT-4o and other vision chat models through chat completions
    (``POST {OPENAI_BASE_URL}/chat/completions``, base default ``https://api.openai.com/v1``)."""

    provider = "openai"
    key_env = "OPENAI_API_KEY"
    base_env = "OPENAI_BASE_URL"
    default_base = "https://api.openai.com/v1"
    example_model = "gpt-4o"
    max_images = 16
    image_size = 1024

    def _image_block(self, b64_jpeg: str) -> dict[str, Any]:
        return {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + b64_jpeg}}

    def request_body(self, question: str, items: list[EvidenceItem]) -> dict[str, Any]:
        p = self._prompt(question, items)
        content = self._user_content(p, items)
        return {"model": self.model, "max_completion_tokens": self.max_tokens, "stream": True,
                "messages": [{"role": "system", "content": p.system}, {"role": "user", "content": content}]}

    def stream(self, question: str, items: list[EvidenceItem]) -> Iterator[str]:
        key = self._key()
        body = self.request_body(question, items)
        headers = {"authorization": f"Bearer {key}"}
        for ev in self._post_stream(f"{self._base()}/chat/completions", headers, body, key):
            if ev.get("_done"):
                return
            if "error" in ev:
                err = ev.get("error") or {}
                raise GeneratorError(self._scrub(f"{self.name}: the stream failed: {err.get('message', err)}", key))
            for ch in ev.get("choices") or []:
                text = (ch.get("delta") or {}).get("content")
                if text:
                    yield text


def _sse(resp) -> Iterator[dict]:
    """Parse a server-sent-event stream; also accepts a plain JSON body (non-streaming servers)."""
    ctype = (resp.headers.get("content-type") or "").lower()
    if "application/json" in ctype:
        obj = json.loads(resp.read().decode("utf-8"))
        for o in obj if isinstance(obj, list) else [obj]:  # Gemini without alt=sse: an array of responses
            if isinstance(o, dict):
                yield from _plain_json_events(o)
        return
    event = None
    data_lines: list[str] = []
    for raw in resp:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data_lines:
                payload = "\n".join(data_lines)
                data_lines = []
                if payload.strip() == "[DONE]":
                    yield {"_done": True}
                    return
                try:
                    obj = json.loads(payload)
                except ValueError:
                    obj = {}
                for o in obj if isinstance(obj, list) else [obj]:  # Gemini may send a JSON array
                    if isinstance(o, dict):
                        o.setdefault("_event", event)
                        yield o
            event = None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data_lines.append(value)
    if data_lines:
        try:
            obj = json.loads("\n".join(data_lines))
            if isinstance(obj, dict):
                yield obj
        except ValueError:
            pass


def _plain_json_events(obj: dict) -> Iterator[dict]:
    """Turn a non-streamed response of either API into the streamed event shapes."""
    if obj.get("type") == "message":  # Anthropic
        for block in obj.get("content") or []:
            if block.get("type") == "text":
                yield {"type": "content_block_delta", "delta": {"type": "text_delta", "text": block.get("text", "")}}
        yield {"type": "message_stop"}
    elif "choices" in obj:  # OpenAI
        for ch in obj["choices"]:
            yield {"choices": [{"delta": {"content": (ch.get("message") or {}).get("content") or ""}}]}
        yield {"_done": True}
    elif "error" in obj or "candidates" in obj or "promptFeedback" in obj:  # an error, or Gemini's own shape
        yield obj


def _error_message(e: urllib.error.HTTPError) -> str:
    """The provider's own error message from an error body (both APIs use {"error": {"message": …}})."""
    try:
        body = e.read(65536).decode("utf-8", errors="replace")
    except Exception:  # noqa: BLE001
        return ""
    try:
        obj = json.loads(body)
        err = obj.get("error", obj) if isinstance(obj, dict) else {}
        if isinstance(err, dict):
            msg = err.get("message") or ""
            typ = err.get("type") or err.get("status") or ""  # Gemini: {"code", "message", "status"}
            return " ".join(f"{typ}: {msg}".strip(": ").split())[:300]
        return " ".join(str(err).split())[:300]
    except ValueError:
        return " ".join(body.split())[:200]
