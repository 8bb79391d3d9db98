"""``gemini:MODEL``: Google's Gemini models through the Generative Language REST API.

``POST {GEMINI_BASE_URL}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse`` with the prompt as
``contents`` (one user turn: text parts and each image as ``inline_data``, base64 JPEG resized to
``image_size`` on the long side), the system instruction as ``systemInstruction`` and ``generationConfig``;
the answer streams as server-sent events, each a ``GenerateContentResponse`` whose
``candidates[0].content.parts[].text`` is the next piece.

The key comes only from the environment (``GEMINI_API_KEY``, else ``GOOGLE_API_KEY``) and travels only in
the ``x-goog-api-key`` header — never in the URL (where proxies and server logs would keep it) and never in
a message or log line. ``GEMINI_BASE_URL`` overrides the endpoint (a proxy or a test server). Retries and
error messages are those of the other API generators (:mod:`imgrag.retrieval.generators.api`).
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Any, Iterator

from imgrag.retrieval.errors import ModelUnavailableError
from imgrag.retrieval.generators.api import _HTTPGenerator
from imgrag.retrieval.generators.base import EvidenceItem, GeneratorError

#: Environment variables holding the key, in the order they are tried.
KEY_ENVS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")


class GeminiGenerator(_HTTPGenerator):
    """Gemini (``gemini:gemini-2.0-flash``, ``gemini:gemini-1.5-pro`` …) with inline images, streamed."""

    provider = "gemini"
    key_env = "GEMINI_API_KEY (or GOOGLE_API_KEY)"
    base_env = "GEMINI_BASE_URL"
    default_base = "https://generativelanguage.googleapis.com"
    example_model = "gemini-2.0-flash"
    max_images = 16
    image_size = 1024

    def __init__(self, model: str | None, **kw: Any) -> None:
        model = (model or "").strip()
        super().__init__(model[len("models/"):] if model.startswith("models/") else model, **kw)

    def _key(self) -> str:
        for env in KEY_ENVS:
            key = os.environ.get(env, "").strip()
            if key:
                return key
        raise ModelUnavailableError(f"{self.name}: set the GEMINI_API_KEY (or GOOGLE_API_KEY) environment "
                                    "variable to your API key")

    def url(self) -> str:
        model = urllib.parse.quote(self.model, safe="-._~")
        return f"{self._base()}/v1beta/models/{model}:streamGenerateContent?alt=sse"

    def _image_block(self, b64_jpeg: str) -> dict[str, Any]:
        return {"inline_data": {"mime_type": "image/jpeg", "data": b64_jpeg}}

    def request_body(self, question: str, items: list[EvidenceItem]) -> dict[str, Any]:
        p = self._prompt(question, items)
        parts = [{"text": c["text"]} if c.get("type") == "text" else c for c in self._user_content(p, items)]
        return {"systemInstruction": {"parts": [{"text": p.system}]},
                "contents": [{"role": "user", "parts": parts}],
                "generationConfig": {"maxOutputTokens": self.max_tokens, "candidateCount": 1}}

    def stream(self, question: str, items: list[EvidenceItem]) -> Iterator[str]:
        key = self._key()
        body = self.request_body(question, items)
        for ev in self._post_stream(self.url(), {"x-goog-api-key": key}, body, key):
            if "error" in ev:
                err = ev.get("error") or {}
                what = err.get("status") or err.get("code") or "error"
                raise GeneratorError(self._scrub(f"{self.name}: the stream failed: {what}: {err.get('message', '')}",
                                                 key))
            blocked = (ev.get("promptFeedback") or {}).get("blockReason")
            if blocked:
                raise GeneratorError(f"{self.name}: the request was blocked by the provider's safety filter "
                                     f"({blocked}); rephrase the question or send fewer images")
            for cand in ev.get("candidates") or []:
                for part in (cand.get("content") or {}).get("parts") or []:
                    text = part.get("text")
                    if text and not part.get("thought"):  # thinking models' thought summaries are not the answer
                        yield text
                if cand.get("finishReason") == "SAFETY":
                    raise GeneratorError(f"{self.name}: the answer was stopped by the provider's safety filter; "
                                         "rephrase the question")
