"""--preprocess tensor: the same vectors as the PIL path (CPU here; the same ops run on CUDA).

Fidelity set: data/samples (PNG with alpha, grey and RGB JPEGs), the five fidelity photos of
tests/test_fidelity.py, two 12-MP re-encodes (the draft decode) and the awkward cases of the PIL path
(EXIF rotation, CMYK, 16-bit grey, palette with transparency, a 5:1 strip). Figures are printed (-s).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgrag.indexer.decode import DecodeDataset, collate
from imgrag.indexer.gpu_plan import GIB, plan_resources
from imgrag.indexer.scan import FileEntry
from imgrag.indexer.tensor_decode import (Finisher, TensorCollate, TensorDecodeDataset, resolve_preprocess,
                                          tensor_loading)
from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.tensorprep import TensorPrep, openclip_prep

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"


# ------------------------------------------------------------------------------------------------ inputs
def _entry(p: Path) -> FileEntry:
    st = p.stat()
    return FileEntry(str(p), st.st_size, st.st_mtime_ns)


def _photo(name: str) -> np.ndarray:
    import skimage.data

    a = getattr(skimage.data, name)()
    return np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]


@pytest.fixture
def fidelity_set(tmp_path, sample_images) -> list[Path]:
    """data/samples + the fidelity photos + 12-MP re-encodes + the PIL path's special cases."""
    d = tmp_path / "set"
    shutil.copytree(SAMPLES, d / "samples")
    for p in sample_images:
        shutil.copy(p, d / p.name)
    for name in ("astronaut", "coffee"):  # 12 MP: drafted by PIL's DCT scaling
        Image.fromarray(_photo(name)).resize((4000, 3000), Image.BICUBIC).save(d / f"{name}-12mp.jpg", quality=92)
    rgb = Image.fromarray(_photo("chelsea"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    rgb.save(d / "rotated.jpg", quality=90, exif=exif.tobytes())
    rgb.convert("CMYK").save(d / "cmyk.jpg", quality=90)
    grey16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(d / "grey16.png")
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    pal.info["transparency"] = 0
    pal.save(d / "palette-transparent.png", transparency=0)
    Image.fromarray(_photo("astronaut")).resize((1000, 200)).save(d / "strip-5to1.jpg", quality=90)
    return sorted(p for p in d.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------------ helpers
def _pixels(emb, paths, mode: str, draft: bool = True):
    """(pixels, rows, results, payload kinds) of ``paths`` through the PIL or the tensor path, in-process."""
    work = [_entry(p) for p in paths]
    args = (work, emb.image_transform(), emb.image_size if draft else None, 178_956_970, frozenset())
    if mode == "pil":
        ds, coll = DecodeDataset(*args), collate
    else:
        ds, coll, finish = tensor_loading(emb, "cpu", args, {})
        assert finish is None and isinstance(coll, TensorCollate)  # CPU: finished inside the worker
    samples = [ds[i] for i in range(len(ds))]
    kinds = [p[0] if isinstance(p, tuple) else None for _, p in samples]
    results, pixels, rows = coll(samples)
    return pixels, rows, results, kinds


def _cosines(emb, paths, draft: bool = True):
    pa, ra, res_a, _ = _pixels(emb, paths, "pil", draft)
    pb, rb, res_b, kinds = _pixels(emb, paths, "tensor", draft)
    assert ra == rb, "both paths keep the same images in the same order"
    assert [r.error for r in res_a] == [r.error for r in res_b]
    for a, b in zip(res_a, res_b):
        if a.meta is not None:
            assert {k: a.meta[k] for k in ("width", "height", "taken_at", "hash")} == \
                   {k: b.meta[k] for k in ("width", "height", "taken_at", "hash")}
    va, vb = emb.embed_pixels(pa), emb.embed_pixels(pb)
    return (va * vb).sum(axis=1), kinds


def _check(name, cos, kinds):
    print(f"\n{name}: n={len(cos)} mean cosine {cos.mean():.7f} min {cos.min():.7f} "
          f"(batched JPEG decode: {kinds.count('jpeg')}, PIL decode to uint8: {kinds.count('u8')})")
    assert kinds.count("jpeg") >= 5 and kinds.count("u8") >= 40  # both routes were exercised
    assert cos.mean() >= 0.999 and cos.min() >= 0.99, (cos.mean(), cos.min())


# ------------------------------------------------------------------------------------------------ fidelity
def test_lite_fidelity(fidelity_set):
    pytest.importorskip("efficientnet_lite_pytorch")
    from imgrag.retrieval.embedders.lite import LiteEmbedder

    emb = LiteEmbedder(device="cpu", batch_size=16)
    cos, kinds = _cosines(emb, fidelity_set)
    _check("lite", cos, kinds)


def test_siglip_fidelity(fidelity_set, tiny_siglip):
    """SigLIP's published preprocessing (squash resize, mean/std 0.5) on the SigLIP-style tiny tower;
    the real ViT-B-16-SigLIP cannot be built offline (its tokenizer is on the Hub)."""
    from imgrag.retrieval.embedders.openclip.transform import make_transform, shared_tag_settings

    pp, _ = shared_tag_settings("ViT-B-16-SigLIP")
    assert pp.get("resize_mode") == "squash"
    tiny_siglip.image_transform()
    cfg = {**tiny_siglip._preprocess_cfg, **pp}
    tiny_siglip._preprocess_cfg, tiny_siglip._transform = cfg, make_transform(cfg)
    try:
        # its 48-px input makes PIL draft every JPEG (as on the CPU the tensor path does too): full decodes
        # here, so the batched JPEG decoder is compared as well
        cos, kinds = _cosines(tiny_siglip, fidelity_set, draft=False)
    finally:
        tiny_siglip._reset()
    _check("siglip (tiny tower, SigLIP preprocessing)", cos, kinds)


@pytest.mark.slow
def test_vit_b32_fidelity(fidelity_set, monkeypatch):
    """Real-size ViT-B-32 (224 px, random init): ~0.4 s per image per path on 2 CPU cores."""
    monkeypatch.setenv("IMGRAG_ALLOW_RANDOM_WEIGHTS", "1")
    from imgrag.retrieval.embedders.openclip import OpenClipEmbedder

    emb = OpenClipEmbedder("ViT-B-32", device="cpu", precision="fp32", batch_size=32)
    cos, kinds = _cosines(emb, fidelity_set)
    _check("ViT-B-32", cos, kinds)


def test_cli_index_tensor_matches_pil(tmp_path, capsys):
    """End to end: data/samples indexed with --preprocess tensor and pil: same rows, same skips, same vectors."""
    pytest.importorskip("efficientnet_lite_pytorch")
    import pyarrow as pa

    from imgrag.app.cli import main
    from imgrag.retrieval.index import Index

    coll = tmp_path / "samples"
    shutil.copytree(SAMPLES, coll)
    (coll / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9")
    vecs, skips = {}, {}
    for mode in ("pil", "tensor"):
        idx = tmp_path / f"idx-{mode}"
        assert main(["index", str(coll), "--index", str(idx), "--model", "lite", "--preprocess", mode,
                     "--workers", "1", "--batch-size", "16"]) == 0
        index = Index.open(idx)
        tab = pa.Table.from_batches(list(index.store.scan(columns=["id", "vector"])))
        vecs[mode] = dict(zip(tab["id"].to_pylist(), np.asarray(tab["vector"].to_pylist(), dtype=np.float32)))
        skips[mode] = sorted((s["path"], s["reason"]) for s in index.skipped())
    capsys.readouterr()
    assert sorted(vecs["pil"]) == sorted(vecs["tensor"]) and len(vecs["pil"]) == 71
    assert skips["pil"] == skips["tensor"] and len(skips["pil"]) == 1
    cos = np.array([vecs["pil"][i] @ vecs["tensor"][i] for i in vecs["pil"]])
    print(f"\nCLI lite data/samples: mean cosine {cos.mean():.7f} min {cos.min():.7f}")
    assert cos.mean() >= 0.999 and cos.min() >= 0.99


# ------------------------------------------------------------------------------------------------ units
def _pil_ref(tf, im):
    import torch

    return torch.as_tensor(tf(im))


@pytest.mark.parametrize("cfg", [
    {"size": 224, "resize_mode": "shortest", "interpolation": "bicubic"},
    {"size": 224, "resize_mode": "shortest", "interpolation": "bilinear"},
    {"size": 224, "resize_mode": "squash", "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3},
    {"size": 224, "resize_mode": "longest", "interpolation": "bicubic"},
    {"size": 48, "resize_mode": "shortest", "interpolation": "bicubic"},
])
def test_openclip_prep_matches_open_clip_transform(cfg):
    import torchvision.transforms.functional as TF
    from open_clip.transform import PreprocessCfg

    from imgrag.retrieval.embedders.openclip.transform import make_transform

    full = {**{k: v for k, v in vars(PreprocessCfg()).items()}, **cfg}
    ref_tf, prep = make_transform(full), openclip_prep(full)
    base = Image.fromarray(_photo("astronaut"))
    for size in ((512, 512), (640, 427), (300, 900), (1000, 150), (3, 2), (225, 224)):
        im = base.resize(size, Image.BILINEAR)
        ref = _pil_ref(ref_tf, im)
        got = prep([TF.pil_to_tensor(im)])[0]
        assert got.shape == ref.shape
        levels = (got - ref).abs() * 255 * float(min(prep.std))  # back to 0..255 levels
        assert float(levels.max()) <= 2.01 and float(levels.mean()) < 0.1, (size, cfg)


def test_tensorprep_batches_mixed_sizes_in_order():
    import torch
    import torchvision.transforms.functional as TF

    prep = TensorPrep(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    ims = [TF.pil_to_tensor(Image.fromarray(_photo("coffee")).resize(s)) for s in ((64, 48), (40, 80), (64, 48))]
    out = prep(ims)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32
    for k, im in enumerate(ims):
        assert torch.equal(out[k], prep([im])[0])  # grouping same-size images changes nothing
    with pytest.raises(ValueError, match="uint8"):
        prep([ims[0].float()])


def test_routing_and_exif_rotation(fidelity_set):
    """Plain JPEGs go to the batched decoder; EXIF-rotated, CMYK, drafted (both sides ≥ 2 × 224 on the CPU), PNG
    go through PIL."""
    from imgrag.retrieval.embedders.lite.transform import LiteTransform

    ds = TensorDecodeDataset([_entry(p) for p in fidelity_set], LiteTransform(), 224, 178_956_970, frozenset())
    kinds = {p.name: ds[i][1][0] for i, p in enumerate(fidelity_set)}
    assert kinds["coffee.jpg"] == kinds["rocket.jpg"] == kinds["strip-5to1.jpg"] == "jpeg"
    for name in ("rotated.jpg", "cmyk.jpg", "astronaut.jpg", "astronaut-12mp.jpg", "grey16.png", "chelsea.png"):
        assert kinds[name] == "u8", name
    i = [p.name for p in fidelity_set].index("rotated.jpg")
    res, (_, u8) = ds[i]
    assert (res.meta["width"], res.meta["height"]) == (300, 451) and tuple(u8.shape) == (3, 451, 300)


def test_refused_jpeg_gets_the_pil_verdict(tmp_path):
    """A JPEG the batched decoder refuses is decoded again by PIL: same skip reason as the PIL path."""
    from imgrag.retrieval.embedders.lite.transform import LiteTransform
    from imgrag.retrieval.imageio import ImageDecodeError, decode_image

    buf = io.BytesIO()
    Image.fromarray(_photo("astronaut")).save(buf, "JPEG", quality=90)
    good, rng, bad = buf.getvalue(), np.random.default_rng(0), None
    for _ in range(200):  # corruptions libjpeg rejects (seeded: always the same file)
        b = bytearray(good)
        for p in rng.integers(1000, len(b) - 1000, 20):
            b[p] = rng.integers(0, 256)
        try:
            decode_image(bytes(b))
        except ImageDecodeError:
            bad = bytes(b)
            break
    assert bad is not None
    p = tmp_path / "bad.jpg"
    p.write_bytes(bad)
    args = ([_entry(p)], LiteTransform(), None, 178_956_970, frozenset())
    pil_res = DecodeDataset(*args)[0][0]
    res, payload = TensorDecodeDataset(*args)[0]
    assert payload[0] == "jpeg"  # header and EOI look fine: it reaches the batched decoder
    finish = Finisher(TensorPrep((224, 224), (0.5,) * 3, (0.5,) * 3), "cpu", 178_956_970)
    pixels, rows = finish([res], {"jpeg": [(0, payload[1])]})
    assert pixels is None and rows == [] and res.error == pil_res.error and res.error


class _NoTensor:
    def tensor_transform(self):
        raise ImgragError("no tensor preprocessing")


class _Tensor:
    def tensor_transform(self):
        return TensorPrep((8, 8), (0.5,) * 3, (0.5,) * 3)


def test_resolve_preprocess():
    assert resolve_preprocess("auto", "cpu", _Tensor()) == "pil"
    assert resolve_preprocess("auto", "cuda", _Tensor()) == "tensor"
    assert resolve_preprocess("auto", "cuda:1", _NoTensor()) == "pil"
    assert resolve_preprocess("tensor", "cpu", _Tensor()) == "tensor"
    assert resolve_preprocess("pil", "cuda", _Tensor()) == "pil"
    with pytest.raises(ImgragError):
        resolve_preprocess("tensor", "cpu", _NoTensor())
    with pytest.raises(ImgragError, match="--preprocess"):
        resolve_preprocess("gpu", "cpu", _Tensor())


@pytest.mark.parametrize("gpus, mem_gib, cores, want", [
    (0, 0, 2, (1, 32, 2, "cpu")),
    (0, 80, 16, (1, 32, 16, "cpu")),  # memory without a GPU means nothing
    (1, 80, 16, (1, 512, 15, "cuda")),  # H100 80 GB: 960 fit → 512
    (1, 141, 16, (1, 1024, 15, "cuda")),  # H200: capped at 1024
    (8, 80, 96, (8, 512, 64, "cuda")),  # 8 replicas, workers capped
    (2, 16, 8, (2, 128, 6, "cuda")),
    (1, 4, 1, (1, 32, 1, "cuda")),  # small GPU, one core: floor values
])
def test_plan_resources(gpus, mem_gib, cores, want):
    p = plan_resources(gpus, int(mem_gib * GIB), cores)
    assert (p.replicas, p.batch_size, p.workers, p.device) == want
