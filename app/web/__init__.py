"""The web UI (``imgrag serve``), one job per module.

- :mod:`.files` — reading indexed files for serving (hash-checked), MIME sniffing, upload limits;
- :mod:`.thumbs` — the thumbnail cache and rendering;
- :mod:`.jobs` — the one-at-a-time background job runner and its progress/ETA;
- :mod:`.backend` — :class:`~.backend.Backend`: the index, its models and every tab's work, in plain Python;
- :mod:`.html` — the small HTML pieces the tabs show (every untrusted string escaped);
- :mod:`.layout` — the Gradio Blocks, one function per tab;
- :mod:`.server` — the FastAPI app (media routes, login check) and ``imgrag serve``.

Only :mod:`.layout` and :mod:`.server` import gradio, lazily; this package file sets gradio's privacy switches
first, so they hold whichever module of the package is imported.
"""

import os

# before gradio is imported anywhere in this process: no telemetry, no version check, no share link
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_RUN_HISTORY", "False")
