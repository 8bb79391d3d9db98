"""Models (embedders, generators), vector stores and queries.

Nothing here imports gradio or the indexer; heavy libraries (torch, open_clip, lancedb, faiss) are
imported lazily inside the functions that need them so that ``import imgrag.retrieval`` stays cheap.
"""

from imgrag.retrieval.errors import ImgragError

__all__ = ["ImgragError"]
