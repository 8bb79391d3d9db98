"""OpenClipEmbedder: shapes, numerics, laziness, spec parsing, offline failure, local weights."""

from __future__ import annotations

import json
import os
import pickle
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import MODEL_CONFIGS_DIR, load_sample
from imgrag.retrieval.embedders import load_embedder
from imgrag.retrieval.embedders import openclip as oc
from imgrag.retrieval.embedders.openclip import hub
from imgrag.retrieval.embedders.openclip import OpenClipEmbedder
from imgrag.retrieval.errors import ImgragError, ModelUnavailableError

TEXTS = ["a photo of an astronaut", "a cat", "a cup of coffee", "a rocket on the launch pad", "", "x" * 500]


@pytest.fixture(scope="module")
def photos():
    return [load_sample(n) for n in ("astronaut", "chelsea", "coffee", "rocket", "camera")]


@pytest.fixture(params=["tiny_clip", "tiny_siglip"])
def emb(request):
    return request.getfixturevalue(request.param)


def _manual_model(name: str, seed: int):
    """A fresh open_clip model of a test architecture with its own (seeded) random weights."""
    import open_clip
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(name)
    return model.eval(), preprocess


def _encode_images(model, preprocess, images):
    import torch

    with torch.inference_mode():
        x = torch.stack([preprocess(im) for im in images])
        return model.encode_image(x, normalize=True).numpy()


def _cos(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------------------------------
# numerics
# ------------------------------------------------------------------------------------------------


def test_image_and_text_embeddings_are_unit_float32(emb, photos):
    img = emb.embed_images(photos)
    txt = emb.embed_texts(TEXTS)
    assert img.shape == (len(photos), emb.dim) and txt.shape == (len(TEXTS), emb.dim)
    assert emb.dim == 32
    for v in (img, txt):
        assert v.dtype == np.float32 and v.flags.c_contiguous
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # different inputs give different vectors
    assert np.abs(img[0] - img[1]).max() > 1e-3
    assert np.abs(txt[0] - txt[1]).max() > 1e-3


def test_deterministic_and_reproducible_across_instances(emb, photos):
    a = emb.embed_images(photos[:2])
    b = emb.embed_images(photos[:2])
    np.testing.assert_array_equal(a, b)
    # random weights are seeded from the name: another instance (or process) gets the same model
    other = OpenClipEmbedder(emb.model_id, device="cpu", precision="fp32")
    np.testing.assert_allclose(other.embed_images(photos[:2]), a, atol=1e-6)
    np.testing.assert_allclose(other.embed_texts(TEXTS[:3]), emb.embed_texts(TEXTS[:3]), atol=1e-6)


def test_batched_equals_one_by_one(emb, photos):
    assert emb.batch_size == 4  # so 5 photos / 6 texts span two batches
    batched = emb.embed_images(photos)
    single = np.concatenate([emb.embed_images([p]) for p in photos])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    tb = emb.embed_texts(TEXTS)
    ts = np.concatenate([emb.embed_texts([t]) for t in TEXTS])
    np.testing.assert_allclose(tb, ts, atol=1e-5)


def test_embed_pixels_matches_embed_images(tiny_clip, photos):
    import torch

    tf = tiny_clip.image_transform()
    pixels = torch.stack([tf(p) for p in photos])
    assert pixels.shape == (5, 3, 32, 32) and pixels.dtype == torch.float32
    np.testing.assert_allclose(tiny_clip.embed_pixels(pixels), tiny_clip.embed_images(photos), atol=1e-6)
    np.testing.assert_allclose(tiny_clip.embed_pixels(pixels[0]), tiny_clip.embed_images(photos[:1]), atol=1e-6)
    with pytest.raises(ValueError):
        tiny_clip.embed_pixels(torch.zeros(2, 1, 32, 32))


def test_empty_inputs(tiny_clip):
    assert tiny_clip.embed_texts([]).shape == (0, 32)
    assert tiny_clip.embed_images([]).shape == (0, 32)
    # a bare string is one text, not a list of characters
    assert tiny_clip.embed_texts("a cat").shape == (1, 32)


def test_logit_scale_and_bias(tiny_clip, tiny_siglip):
    assert tiny_clip.logit_bias is None
    assert tiny_clip.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # CLIP's init temperature
    assert tiny_siglip.logit_bias == pytest.approx(-10.0)
    assert tiny_siglip.logit_scale == pytest.approx(10.0, rel=1e-5)


def test_image_sizes_and_transform_is_picklable(tiny_clip, tiny_siglip, photos):
    assert tiny_clip.image_size == 32 and tiny_siglip.image_size == 48
    tf = tiny_siglip.image_transform()
    clone = pickle.loads(pickle.dumps(tf))
    x = clone(photos[0])
    assert tuple(x.shape) == (3, 48, 48)
    np.testing.assert_array_equal(x.numpy(), tf(photos[0]).numpy())


def test_extreme_aspect_ratios(tiny_clip, photos):
    """A 20000x10 strip is cheap to preprocess; 3:1 crops agree with open_clip's own pipeline."""
    tf = tiny_clip.image_transform()
    strip = Image.new("RGB", (20000, 10), (200, 30, 30))
    assert tuple(tf(strip).shape) == (3, 32, 32)
    assert tuple(tf(strip.transpose(Image.Transpose.ROTATE_90)).shape) == (3, 32, 32)
    assert tuple(tf(Image.new("RGB", (1, 1), (0, 0, 255))).shape) == (3, 32, 32)

    wide = photos[0].resize((768, 256))  # 3:1, guarded path
    plain = tf.preprocess  # open_clip's preprocess_val
    assert _cos(tf(wide).numpy(), plain(wide).numpy()) > 0.999
    assert _cos(tiny_clip.embed_pixels(tf(wide)), tiny_clip.embed_pixels(plain(wide))) > 0.999
    normal = photos[1]  # 451x300, untouched path: bit-identical to open_clip
    np.testing.assert_array_equal(tf(normal).numpy(), plain(normal).numpy())


def test_matches_open_clip_reference_pipeline(tiny_clip, photos):
    """Same weights → same vectors as open_clip's create_model_and_transforms + get_tokenizer."""
    import open_clip
    import torch

    model, _, preprocess = open_clip.create_model_and_transforms("imgrag-tiny-clip")
    model.load_state_dict(tiny_clip._model.state_dict())
    model.eval()
    ref = _encode_images(model, preprocess, photos)
    np.testing.assert_allclose(tiny_clip.embed_images(photos), ref, atol=1e-5)
    tok = open_clip.get_tokenizer("imgrag-tiny-clip")
    with torch.inference_mode():
        ref_t = model.encode_text(tok(TEXTS), normalize=True).numpy()
    np.testing.assert_allclose(tiny_clip.embed_texts(TEXTS), ref_t, atol=1e-5)


def test_vit_b_32_fidelity(photos):
    """Full-size ViT-B-32 (random weights): same vectors as open_clip's reference pipeline."""
    import open_clip
    import torch

    emb = OpenClipEmbedder("ViT-B-32", device="cpu", precision="fp32")
    got = emb.embed_images(photos[:2])
    assert got.shape == (2, 512) and emb.image_size == 224 and emb.context_length == 77
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")
    model.load_state_dict(emb._model.state_dict())
    model.eval()
    np.testing.assert_allclose(got, _encode_images(model, preprocess, photos[:2]), atol=1e-5)
    with torch.inference_mode():
        ref_t = model.encode_text(open_clip.get_tokenizer("ViT-B-32")(TEXTS[:2]), normalize=True).numpy()
    np.testing.assert_allclose(emb.embed_texts(TEXTS[:2]), ref_t, atol=1e-5)
    fp = emb.fingerprint()
    assert fp["mean"] == [0.48145466, 0.4578275, 0.40821073] and fp["resize_mode"] == "shortest"


# ------------------------------------------------------------------------------------------------
# laziness, device, precision
# ------------------------------------------------------------------------------------------------


def test_constructor_is_lazy_and_load_is_thread_safe(tiny_model_configs, monkeypatch):
    emb = OpenClipEmbedder("imgrag-tiny-clip", device="cpu", precision="fp32")
    assert not emb.is_loaded
    assert emb.model_id == "imgrag-tiny-clip"
    # even a model whose weights are missing constructs fine: nothing is fetched until first use
    missing = OpenClipEmbedder("ViT-B-32:laion2b_s34b_b79k", device="cpu", precision="fp32")
    assert not missing.is_loaded

    calls = []
    real_load = OpenClipEmbedder._load

    def counting_load(self):
        calls.append(1)
        real_load(self)

    monkeypatch.setattr(OpenClipEmbedder, "_load", counting_load)
    results, errors = [], []

    def worker():
        try:
            results.append(emb.embed_texts(["a cat"]))
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(calls) == 1 and emb.is_loaded
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_device_and_precision_resolution(tiny_model_configs, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None:
        monkeypatch.setattr(mps, "is_available", lambda: False)
    from imgrag.retrieval import device as dev

    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    assert dev.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
    for native, dtype in ((False, torch.float32), (True, torch.bfloat16)):  # auto on CPU follows the hardware
        monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda native=native: native)
        emb = OpenClipEmbedder("imgrag-tiny-clip")
        assert emb.device == "cpu" and emb.dtype == dtype and emb.batch_size == 32
        assert OpenClipEmbedder("imgrag-tiny-clip", precision="fp32").dtype == torch.float32
    assert OpenClipEmbedder("imgrag-tiny-clip", precision="bf16").dtype == torch.bfloat16
    with pytest.raises(ImgragError, match="precision"):
        OpenClipEmbedder("imgrag-tiny-clip", precision="fp8")
    with pytest.raises(ImgragError, match="CUDA is not available"):
        OpenClipEmbedder("imgrag-tiny-clip", device="cuda")
    with pytest.raises(ImgragError, match="unknown device"):
        OpenClipEmbedder("imgrag-tiny-clip", device="tpu")
    with pytest.raises(ImgragError, match="batch size"):
        OpenClipEmbedder("imgrag-tiny-clip", batch_size=-1)


def test_bf16_on_cpu_close_to_fp32(emb, photos):
    """Low precision (incl. the SigLIP-style text tower with a biased projection) ≈ fp32."""
    lowp = OpenClipEmbedder(emb.model_id, device="cpu", precision="bf16")
    a, b = lowp.embed_images(photos[:2]), emb.embed_images(photos[:2])
    assert a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert min(_cos(x, y) for x, y in zip(a, b)) > 0.98
    ta, tb = lowp.embed_texts(TEXTS[:3]), emb.embed_texts(TEXTS[:3])
    assert min(_cos(x, y) for x, y in zip(ta, tb)) > 0.98


# ------------------------------------------------------------------------------------------------
# spec parsing
# ------------------------------------------------------------------------------------------------


def test_load_embedder_dispatch(tiny_model_configs):
    emb = load_embedder("imgrag-tiny-siglip", device="cpu")
    assert isinstance(emb, OpenClipEmbedder) and not emb.is_loaded


def test_unknown_name_lists_choices():
    with pytest.raises(ImgragError) as ei:
        OpenClipEmbedder("ViT-B-33:laion2b_s34b_b79k")
    msg = str(ei.value)
    assert "unknown open_clip model 'ViT-B-33'" in msg and "Did you mean: ViT-B-32" in msg
    assert "ViT-L-14" in msg and "\n" not in msg


def test_unknown_tag_lists_valid_tags():
    with pytest.raises(ImgragError) as ei:
        OpenClipEmbedder("ViT-B-32:laion5b")
    msg = str(ei.value)
    assert "unknown pretrained tag 'laion5b' for ViT-B-32" in msg
    assert "laion2b_s34b_b79k" in msg and "openai" in msg


def test_tag_is_canonicalised():
    emb = OpenClipEmbedder("ViT-B-32:LAION2B-S34B-B79K", device="cpu", precision="fp32")
    assert emb.model_id == "ViT-B-32:laion2b_s34b_b79k" and emb.spec.kind == "tag"


def test_bare_name_needs_a_tag_unless_random_allowed(monkeypatch):
    monkeypatch.delenv("IMGRAG_ALLOW_RANDOM_WEIGHTS")
    with pytest.raises(ImgragError) as ei:
        OpenClipEmbedder("ViT-B-32")
    msg = str(ei.value)
    assert "needs pretrained weights" in msg and "ViT-B-32:TAG" in msg and "laion2b_s34b_b79k" in msg
    monkeypatch.setenv("IMGRAG_ALLOW_RANDOM_WEIGHTS", "1")
    assert OpenClipEmbedder("ViT-B-32").spec.kind == "random"


@pytest.mark.parametrize("spec", ["", "hf-hub:", "hf-hub:just-a-name", "ViT-B-32:"])
def test_malformed_specs(spec):
    with pytest.raises(ImgragError):
        OpenClipEmbedder(spec)


def test_missing_local_paths(tmp_path):
    with pytest.raises(ModelUnavailableError, match="checkpoint file not found"):
        OpenClipEmbedder(f"ViT-B-32:{tmp_path}/nope.bin")
    with pytest.raises(ModelUnavailableError, match="model directory not found"):
        OpenClipEmbedder(str(tmp_path / "nodir"))
    with pytest.raises(ModelUnavailableError, match="open_clip_config.json"):
        OpenClipEmbedder(str(tmp_path))


def test_model_configs_env_registers_architectures(monkeypatch, tmp_path):
    cfg = json.loads((MODEL_CONFIGS_DIR / "imgrag-tiny-clip.json").read_text())
    (tmp_path / "imgrag-env-registered.json").write_text(json.dumps(cfg))
    monkeypatch.setenv(oc.MODEL_CONFIGS_ENV, str(tmp_path))
    assert OpenClipEmbedder("imgrag-env-registered", device="cpu", precision="fp32").spec.kind == "random"


# ------------------------------------------------------------------------------------------------
# offline behaviour
# ------------------------------------------------------------------------------------------------


def _assert_offline_message(msg: str, name: str | None = "ViT-B-32"):
    assert "cannot be loaded offline" in msg
    if name:
        assert f"--model {name}:/path/to/open_clip_pytorch_model.bin" in msg
    else:
        assert "--model /path/to/repo-dir" in msg
    assert "HF_HUB_OFFLINE=1" in msg and "HF_HOME" in msg
    assert "--model lite" in msg
    assert "\n" not in msg


@pytest.mark.timeout(60)
def test_offline_tag_fails_fast_with_guidance(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "_probe", lambda *a: pytest.fail("probed the network in offline mode"))
    emb = OpenClipEmbedder("ViT-B-32:laion2b_s34b_b79k", device="cpu", precision="fp32")
    with pytest.raises(ModelUnavailableError) as ei:
        emb.warmup()
    _assert_offline_message(str(ei.value))
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in str(ei.value)
    assert not emb.is_loaded


@pytest.mark.timeout(60)
def test_unreachable_network_fails_fast(monkeypatch, tmp_path):
    """Without HF_HUB_OFFLINE, an unreachable hub is detected by a short probe (no retry storm)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "network_available", lambda *a: False)
    for spec, name in [("ViT-B-32:laion2b_s34b_b79k", "ViT-B-32"), ("hf-hub:org/not-cached", None)]:
        with pytest.raises(ModelUnavailableError) as ei:
            OpenClipEmbedder(spec, device="cpu", precision="fp32").warmup()
        _assert_offline_message(str(ei.value), name)


def test_network_probe_respects_offline_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "_probe", lambda *a: pytest.fail("probed"))
    assert hub.network_available() is False


# ------------------------------------------------------------------------------------------------
# local weights
# ------------------------------------------------------------------------------------------------


def _save_state_dict(model, path):
    import torch

    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, str(path))


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_local_checkpoint_file(tiny_model_configs, tmp_path, photos, suffix):
    model, preprocess = _manual_model("imgrag-tiny-clip", seed=1234)
    path = tmp_path / f"weights{suffix}"
    _save_state_dict(model, path)

    emb = OpenClipEmbedder(f"imgrag-tiny-clip:{path}", device="cpu", precision="fp32")
    assert emb.model_id == f"imgrag-tiny-clip:{path.resolve()}" and not emb.is_loaded
    got = emb.embed_images(photos[:3])
    np.testing.assert_allclose(got, _encode_images(model, preprocess, photos[:3]), atol=1e-5)
    # and not the name-seeded random model
    rand = OpenClipEmbedder("imgrag-tiny-clip", device="cpu", precision="fp32").embed_images(photos[:1])
    assert np.abs(got[0] - rand[0]).max() > 1e-3
    fp = emb.fingerprint()
    assert fp["weights"] == {"file": path.name, "size": path.stat().st_size}
    assert json.loads(json.dumps(fp)) == fp


def test_checkpoint_for_another_architecture_is_refused(tiny_model_configs, tmp_path):
    model, _ = _manual_model("imgrag-tiny-siglip", seed=1)
    path = tmp_path / "siglip.bin"
    _save_state_dict(model, path)
    with pytest.raises(ModelUnavailableError, match="do not match the architecture"):
        OpenClipEmbedder(f"imgrag-tiny-clip:{path}", device="cpu", precision="fp32").warmup()


def test_local_dir_like_a_downloaded_hf_repo(tiny_model_configs, tmp_path, photos):
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    model, _ = _manual_model("imgrag-tiny-siglip", seed=99)
    repo = tmp_path / "my-siglip"
    repo.mkdir()
    preprocess_cfg = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear",
                      "resize_mode": "squash"}
    model_cfg = json.loads((MODEL_CONFIGS_DIR / "imgrag-tiny-siglip.json").read_text())
    (repo / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}))

    with pytest.raises(ModelUnavailableError, match="no weights file"):
        OpenClipEmbedder(str(repo), device="cpu").warmup()
    _save_state_dict(model, repo / "open_clip_pytorch_model.bin")

    emb = OpenClipEmbedder(str(repo), device="cpu", precision="fp32")
    assert emb.model_id == str(repo.resolve())
    fp = emb.fingerprint()
    assert fp["mean"] == [0.5, 0.5, 0.5] and fp["resize_mode"] == "squash" and fp["interpolation"] == "bilinear"
    assert fp["image_size"] == [48, 48] and fp["weights"]["file"] == "open_clip_pytorch_model.bin"
    assert emb.logit_bias == pytest.approx(-10.0)
    pp = image_transform_v2(PreprocessCfg(**{**preprocess_cfg, "size": 48}), is_train=False)
    np.testing.assert_allclose(emb.embed_images(photos[:2]), _encode_images(model, pp, photos[:2]), atol=1e-5)
    tok = open_clip.get_tokenizer(f"local-dir:{repo}")
    import torch

    with torch.inference_mode():
        ref = model.encode_text(tok(TEXTS[:2]), normalize=True).numpy()
    np.testing.assert_allclose(emb.embed_texts(TEXTS[:2]), ref, atol=1e-5)


def test_tag_loads_from_prepopulated_hf_cache(tiny_model_configs, monkeypatch, tmp_path, photos):
    """NAME:TAG with weights in the HF cache loads offline and uses the tag's preprocessing and GELU."""
    import open_clip.pretrained as ocp
    from open_clip.transform import PreprocessCfg, image_transform_v2

    monkeypatch.setitem(ocp._PRETRAINED, "imgrag-tiny-clip", {
        "fake_webli": {"url": "", "hf_hub": "imgrag-test/tiny-clip/", "mean": (0.5, 0.5, 0.5),
                       "std": (0.5, 0.5, 0.5), "interpolation": "bicubic", "resize_mode": "squash",
                       "quick_gelu": True},
    })
    hf_home = tmp_path / "hf"
    snap = hf_home / "hub" / "models--imgrag-test--tiny-clip" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    emb = OpenClipEmbedder("imgrag-tiny-clip:fake-webli", device="cpu", precision="fp32")
    with pytest.raises(ModelUnavailableError):
        emb.warmup()  # not cached yet

    import open_clip
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        ref_model = open_clip.create_model("imgrag-tiny-clip", force_quick_gelu=True).eval()
    _save_state_dict(ref_model, snap / "open_clip_pytorch_model.bin")

    emb = OpenClipEmbedder("imgrag-tiny-clip:fake_webli", device="cpu", precision="fp32")
    fp = emb.fingerprint()
    assert fp["pretrained"] == "fake_webli" and fp["quick_gelu"] is True
    assert fp["mean"] == [0.5, 0.5, 0.5] and fp["resize_mode"] == "squash"
    assert fp["weights"]["source"] == "imgrag-test/tiny-clip/"
    assert fp["weights"]["file"] == "open_clip_pytorch_model.bin"
    pp = image_transform_v2(PreprocessCfg(size=32, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash"),
                            is_train=False)
    np.testing.assert_allclose(emb.embed_images(photos[:2]), _encode_images(ref_model, pp, photos[:2]), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# fingerprints
# ------------------------------------------------------------------------------------------------


def test_fingerprint_is_json_native_and_distinguishes_models(tiny_clip, tiny_siglip):
    a, b = tiny_clip.fingerprint(), tiny_siglip.fingerprint()

    def no_tuples(x):
        if isinstance(x, tuple):
            return False
        if isinstance(x, dict):
            return all(isinstance(k, str) and no_tuples(v) for k, v in x.items())
        if isinstance(x, list):
            return all(no_tuples(v) for v in x)
        return x is None or isinstance(x, (str, int, float, bool))

    assert no_tuples(a) and no_tuples(b)
    assert json.loads(json.dumps(a)) == a
    assert a != b and a["config_sha1"] != b["config_sha1"]
    for key in ("spec", "architecture", "weights", "image_size", "mean", "std", "interpolation", "resize_mode"):
        assert key in a
    assert a["spec"] == "imgrag-tiny-clip" and a["image_size"] == [32, 32] and a["dim"] == 32
    # device/precision do not change the fingerprint: an fp16 GPU index is searchable on a CPU
    assert OpenClipEmbedder("imgrag-tiny-clip", device="cpu", precision="bf16").fingerprint() == a


def test_hf_hub_spec_from_prepopulated_cache(tiny_model_configs, monkeypatch, tmp_path, photos):
    model, _ = _manual_model("imgrag-tiny-siglip", seed=5)
    hf_home = tmp_path / "hf"
    repo_dir = hf_home / "hub" / "models--imgrag-test--tiny-siglip-hub"
    snap = repo_dir / "snapshots" / ("b" * 40)
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("b" * 40)
    model_cfg = json.loads((MODEL_CONFIGS_DIR / "imgrag-tiny-siglip.json").read_text())
    preprocess_cfg = {"mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "squash"}
    (snap / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}))
    _save_state_dict(model, snap / "open_clip_pytorch_model.bin")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    emb = OpenClipEmbedder("hf-hub:imgrag-test/tiny-siglip-hub", device="cpu", precision="fp32")
    assert emb.model_id == "hf-hub:imgrag-test/tiny-siglip-hub"
    fp = emb.fingerprint()
    assert fp["weights"] == {"repo": "imgrag-test/tiny-siglip-hub", "file": "open_clip_pytorch_model.bin",
                             "size": (snap / "open_clip_pytorch_model.bin").stat().st_size}
    assert fp["mean"] == [0.5] * 3 and fp["resize_mode"] == "squash"
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pp = image_transform_v2(PreprocessCfg(size=48, **preprocess_cfg), is_train=False)
    np.testing.assert_allclose(emb.embed_images(photos[:2]), _encode_images(model, pp, photos[:2]), atol=1e-5)
    assert emb.logit_bias == pytest.approx(-10.0)


# ------------------------------------------------------------------------------------------------
# registry and per-family defaults
# ------------------------------------------------------------------------------------------------


def test_family_defaults_come_from_the_spec_without_torch_or_open_clip():
    """Queries read thresholds and hybrid weights from the index's model spec; that must import no model
    library (a cold `imgrag search` with the lite model never imports torch)."""
    import subprocess
    import sys

    code = ("import sys, json\n"
            "from imgrag.retrieval.embedders import model_defaults, embedder_class_for\n"
            "from imgrag.retrieval.queries.answer import default_min_score\n"
            "from imgrag.retrieval.queries.hybrid import hybrid_defaults\n"
            "specs = ['lite', 'lite:top=5', 'ViT-B-32:laion2b_s34b_b79k', 'hf-hub:timm/ViT-B-16-SigLIP', 'x']\n"
            "out = {s: [model_defaults(s).family, default_min_score(s), list(hybrid_defaults(s)[0]),\n"
            "           hybrid_defaults(s)[1], model_defaults(s).class_names, embedder_class_for(s).__name__]\n"
            "       for s in specs}\n"
            "out['loaded'] = sorted(m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules)\n"
            "print(json.dumps(out))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got.pop("loaded") == []
    assert got["lite"] == got["lite:top=5"] == ["lite", 0.25, [0.5, 1.0], 0.1, True, "LiteEmbedder"]
    assert got["ViT-B-32:laion2b_s34b_b79k"] == ["clip", 0.18, [1.0, 1.0], 0.0, False, "OpenClipEmbedder"]
    assert got["hf-hub:timm/ViT-B-16-SigLIP"] == ["siglip", 0.05, [1.0, 1.0], 0.0, False, "OpenClipEmbedder"]
    assert got["x"][0] == "clip" and got["x"][-1] == "OpenClipEmbedder"  # unclaimed specs: the fallback


def test_registered_embedder_is_loaded_and_describes_its_defaults(monkeypatch):
    from fakes import FakeEmbedder

    from imgrag.retrieval.embedders import ModelDefaults, model_defaults, register_embedder, registry
    from imgrag.retrieval.queries.hybrid import hybrid_defaults

    monkeypatch.setattr(registry, "_entries", list(registry._entries))  # undone after the test

    class PluginEmbedder(FakeEmbedder):
        def __init__(self, spec, device="auto", precision="auto", batch_size=None):
            super().__init__(model_id=spec, batch_size=batch_size or 8)

        @classmethod
        def defaults(cls, spec):
            return ModelDefaults(family="plugin", min_score=0.4, hybrid_weights=(0.25, 1.0), vector_gate=0.2)

    register_embedder("plugin", PluginEmbedder)
    emb = load_embedder("plugin:v2", device="cpu", batch_size=3)
    assert isinstance(emb, PluginEmbedder) and emb.model_id == "plugin:v2" and emb.batch_size == 3
    assert model_defaults("plugin").family == "plugin" and hybrid_defaults("plugin:v2") == ((0.25, 1.0), 0.2)
    assert model_defaults("pluginx").family == "clip"  # a prefix is a whole word before ":"
    assert emb.nearest_class_names(np.ones(8, np.float32)) == []  # the default: no class vocabulary
