"""``imgrag tune``: a small adapter trained on stored vectors with SigLIP's or CLIP's loss, and few-shot
class prototypes. Query-time parts (adapter.py, fewshot.py) are NumPy only; training imports torch."""
from imgrag.retrieval.tune.adapter import (ADAPTER_FILE, Adapter, active_adapter, adapter_info, load_adapter,
                                           reset_adapter, save_adapter, set_adapter_enabled)

__all__ = ["ADAPTER_FILE", "Adapter", "active_adapter", "adapter_info", "load_adapter", "reset_adapter",
           "save_adapter", "set_adapter_enabled"]
