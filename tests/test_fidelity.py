"""Fidelity: the indexer's stored vectors equal the plain open_clip reference path.

Reference = ``preprocess(Image.open(p).convert("RGB"))`` + ``model.encode_image`` one image at a time,
with a random-init ViT-B-32 (the published architecture; same weights copied into both paths). If
this holds, published zero-shot/retrieval quality of a checkpoint carries over to imgrag's index.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.retrieval.embedders.openclip import OpenClipEmbedder
from imgrag.retrieval.index import Index


def _reference(model, preprocess, paths):
    import torch

    out = []
    with torch.no_grad():
        for p in paths:
            x = preprocess(Image.open(p).convert("RGB")).unsqueeze(0)
            v = model.encode_image(x)[0].numpy()
            out.append(v / np.linalg.norm(v))
    return np.stack(out)


def _stored(index, paths):
    tab = index.store.get([str(p) for p in paths], columns=["id", "vector"])
    by_id = dict(zip(tab["id"].to_pylist(), tab["vector"].to_pylist()))
    return np.asarray([by_id[str(p)] for p in paths], dtype=np.float32)


@pytest.mark.slow
def test_indexer_matches_open_clip_reference(tmp_path, sample_images):
    import open_clip

    emb = OpenClipEmbedder("ViT-B-32", device="cpu", precision="fp32", batch_size=3)
    idx = Index.create_or_open(tmp_path / "full", emb, store="lancedb")
    build_index(idx, [sample_images[0].parent], IndexOptions(batch_size=3, workers=1, draft=False))
    ref_model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")
    ref_model.load_state_dict(emb._model.state_dict())
    ref_model.eval()
    ref = _reference(ref_model, preprocess, sample_images)
    got = _stored(idx, sample_images)
    cos = (ref * got).sum(axis=1)
    assert cos.min() >= 0.9999, cos

    # draft (reduced-size JPEG decoding) on 12-megapixel re-encodes: close to the reference
    big = tmp_path / "big"
    big.mkdir()
    bigs = []
    for p in sample_images:
        im = Image.open(p).convert("RGB").resize((4000, 3000), Image.BICUBIC)
        q = big / (p.stem + ".jpg")
        im.save(q, quality=92)
        bigs.append(q)
    idx2 = Index.create_or_open(tmp_path / "draft", emb, store="lancedb")
    build_index(idx2, [big], IndexOptions(batch_size=3, workers=1, draft=True))
    cos_draft = (_reference(ref_model, preprocess, bigs) * _stored(idx2, bigs)).sum(axis=1)
    print(f"draft cosine vs reference: min {cos_draft.min():.5f} mean {cos_draft.mean():.5f}")
    assert cos_draft.min() >= 0.99, cos_draft
