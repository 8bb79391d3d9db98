"""Tiny random-init vision-language models of real architectures, saved like a hub checkpoint.

Each builder writes config + random weights + processor (image processor, a small byte-level BPE
tokenizer trained here on the prompt's own wording, chat template) to a directory, so tests load it
through the real ``hf:/path`` code path. No downloads. Sizes: hidden 32–64, 1–2 layers, images 28–56 px.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

# A chat template of the common shape (ChatML with interleaved images), parameterised by what an
# image becomes in the text; real checkpoints ship their own.
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}IMAGE_STR{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

BASE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>", "<bos>", "<eos>", "<image>"]


def _corpus() -> list[str]:
    from imgrag.retrieval.generators import prompt

    words = ("cat dog coffee rocket photo image images show answer question file taken labels text data "
             "the a of in is are this that not do does what which when where yes no").split()
    return [prompt.SYSTEM, prompt.SYSTEM_TEXT_ONLY, prompt.SYSTEM_SMALL, " ".join(words) * 3,
            "Images: Question: Answer briefly and cite the images you use as [1] [2] [3] [4]."]


def make_tokenizer(extra_specials: list[str] = (), vocab_size: int = 320, **special_map):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys([*BASE_SPECIALS, *extra_specials]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    kw = dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    kw.update(special_map)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, **kw)
    hf.add_special_tokens({"additional_special_tokens": [s for s in specials if s not in kw.values()]})
    return hf


def _llama_text(vocab: int, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, **kw)


def _clip_vision(image_size: int, patch: int, **kw):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            image_size=image_size, patch_size=patch, projection_dim=32, **kw)


def _save(out: Path, model, processor) -> Path:
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_llava(out: Path) -> Path:
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = make_tokenizer()
    cfg = LlavaConfig(vision_config=_clip_vision(30, 6), text_config=_llama_text(len(tok)),
                      image_token_index=tok.convert_tokens_to_ids("<image>"), projector_hidden_act="gelu",
                      vision_feature_select_strategy="default", vision_feature_layer=-1)
    ip = CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=6, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=CHATML.replace("IMAGE_STR", "<image>"))
    torch.manual_seed(0)
    return _save(out, LlavaForConditionalGeneration(cfg), proc)


PINPOINTS = [[30, 30], [30, 60], [60, 30]]


def build_llava_next(out: Path) -> Path:
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
                              LlavaNextProcessor)

    tok = make_tokenizer()
    cfg = LlavaNextConfig(vision_config=_clip_vision(30, 6), text_config=_llama_text(len(tok)),
                          image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=PINPOINTS,
                          vision_feature_select_strategy="default", vision_feature_layer=-1)
    ip = LlavaNextImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30},
                                 image_grid_pinpoints=PINPOINTS)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=6, vision_feature_select_strategy="default",
                              num_additional_image_tokens=1, chat_template=CHATML.replace("IMAGE_STR", "<image>"))
    torch.manual_seed(0)
    return _save(out, LlavaNextForConditionalGeneration(cfg), proc)


def _qwen2_text(vocab: int, **kw):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, **kw)


def _siglip_vision(image_size: int, patch: int, **kw):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=image_size, patch_size=patch, **kw)


def build_llava_onevision(out: Path) -> Path:
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor)

    tok = make_tokenizer(["<video>"])
    cfg = LlavaOnevisionConfig(vision_config=_siglip_vision(30, 6), text_config=_qwen2_text(len(tok)),
                               image_token_index=tok.convert_tokens_to_ids("<image>"),
                               video_token_index=tok.convert_tokens_to_ids("<video>"), image_grid_pinpoints=PINPOINTS,
                               vision_feature_select_strategy="full", vision_feature_layer=-1,
                               vision_aspect_ratio="anyres_max_9")
    ip = LlavaOnevisionImageProcessor(size={"height": 30, "width": 30}, image_grid_pinpoints=PINPOINTS)
    vp = LlavaOnevisionVideoProcessor(size={"height": 30, "width": 30})
    proc = LlavaOnevisionProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, num_image_tokens=25,
                                   vision_feature_select_strategy="full",
                                   chat_template=CHATML.replace("IMAGE_STR", "<image>"))
    torch.manual_seed(0)
    return _save(out, LlavaOnevisionForConditionalGeneration(cfg), proc)


def build_qwen2_vl(out: Path) -> Path:
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    sp = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = make_tokenizer(sp)
    ids = {t: tok.convert_tokens_to_ids(t) for t in sp}
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
                eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                        vision_end_token_id=ids["<|vision_end|>"], eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    px = dict(min_pixels=56 * 56, max_pixels=56 * 56)
    ip = Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2, **px)
    vp = Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2, **px)
    proc = Qwen2VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp,
                            chat_template=CHATML.replace("IMAGE_STR", "<|vision_start|><|image_pad|><|vision_end|>"))
    torch.manual_seed(0)
    return _save(out, Qwen2VLForConditionalGeneration(cfg), proc)


def build_paligemma(out: Path) -> Path:
    from transformers import (GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor,
                              SiglipImageProcessor)

    tok = make_tokenizer()
    text = GemmaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=2048)
    cfg = PaliGemmaConfig(vision_config=_siglip_vision(28, 14, projection_dim=32), text_config=text,
                          image_token_index=tok.convert_tokens_to_ids("<image>"), projection_dim=32)
    cfg.vision_config.num_image_tokens = 4
    ip = SiglipImageProcessor(size={"height": 28, "width": 28})
    ip.image_seq_length = 4
    proc = PaliGemmaProcessor(image_processor=ip, tokenizer=tok)
    torch.manual_seed(0)
    return _save(out, PaliGemmaForConditionalGeneration(cfg), proc)


def build_blip2(out: Path) -> Path:
    from transformers import (BlipImageProcessor, Blip2Config, Blip2ForConditionalGeneration, Blip2Processor,
                              Blip2QFormerConfig, Blip2VisionConfig, OPTConfig)

    tok = make_tokenizer()
    vision = Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               image_size=30, patch_size=6)
    qformer = Blip2QFormerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                 encoder_hidden_size=32, vocab_size=len(tok))
    text = OPTConfig(vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                     word_embed_proj_dim=32, max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                      num_query_tokens=4, image_token_index=tok.convert_tokens_to_ids("<image>"))
    ip = BlipImageProcessor(size={"height": 30, "width": 30})
    proc = Blip2Processor(image_processor=ip, tokenizer=tok, num_query_tokens=4)
    torch.manual_seed(0)
    return _save(out, Blip2ForConditionalGeneration(cfg), proc)


def build_idefics3(out: Path) -> Path:
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor, Idefics3VisionConfig)

    sp = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"] + [
        f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    tok = make_tokenizer(sp)
    vision = Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=56, patch_size=14)
    cfg = Idefics3Config(vision_config=vision.to_dict(), text_config=_llama_text(len(tok)).to_dict(), scale_factor=2,
                         image_token_id=tok.convert_tokens_to_ids("<image>"))
    ip = Idefics3ImageProcessor(size={"longest_edge": 56}, max_image_size={"longest_edge": 56},
                                do_image_splitting=False)
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4,
                             chat_template=CHATML.replace("IMAGE_STR", "<image>"))
    torch.manual_seed(0)
    return _save(out, Idefics3ForConditionalGeneration(cfg), proc)


def build_idefics(out: Path) -> Path:
    """Idefics (v1): Flamingo-style gated cross-attention to the images, one <image> token per image."""
    from transformers import IdeficsConfig, IdeficsForVisionText2Text, IdeficsImageProcessor, IdeficsProcessor

    tok = make_tokenizer(["<fake_token_around_image>", "<end_of_utterance>"])
    vision = dict(embed_dim=32, image_size=30, patch_size=6, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64)
    cfg = IdeficsConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, cross_layer_interval=1, vision_config=vision, use_resampler=False,
                        max_position_embeddings=2048, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id)
    ip = IdeficsImageProcessor(image_size=30)
    proc = IdeficsProcessor(image_processor=ip, tokenizer=tok, image_size=30)
    torch.manual_seed(0)
    return _save(out, IdeficsForVisionText2Text(cfg), proc)


def build_idefics2(out: Path) -> Path:
    from transformers import (Idefics2Config, Idefics2ForConditionalGeneration, Idefics2ImageProcessor,
                              Idefics2Processor)

    tok = make_tokenizer(["<fake_token_around_image>", "<end_of_utterance>"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28,
                  patch_size=14)
    perceiver = dict(hidden_size=32, resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2,
                     resampler_head_dim=8, num_key_value_heads=1)
    cfg = Idefics2Config(vision_config=vision, perceiver_config=perceiver,
                         text_config=_llama_text(len(tok)).to_dict(),
                         image_token_id=tok.convert_tokens_to_ids("<image>"))
    ip = Idefics2ImageProcessor(size={"longest_edge": 28, "shortest_edge": 28}, do_image_splitting=False)
    proc = Idefics2Processor(image_processor=ip, tokenizer=tok, image_seq_len=4,
                             chat_template=CHATML.replace("IMAGE_STR", "<image>"))
    torch.manual_seed(0)
    return _save(out, Idefics2ForConditionalGeneration(cfg), proc)


def build_internvl(out: Path) -> Path:
    from transformers import (GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration,
                              InternVLProcessor, InternVLVideoProcessor, InternVLVisionConfig)

    sp = ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    tok = make_tokenizer(sp, start_image_token="<img>", end_image_token="</img>", context_image_token="<IMG_CONTEXT>",
                         video_token="<video>")
    vision = InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=[28, 28], patch_size=[14, 14])
    cfg = InternVLConfig(vision_config=vision.to_dict(), text_config=_qwen2_text(len(tok)).to_dict(),
                         downsample_ratio=0.5, image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"))
    ip = GotOcr2ImageProcessor(size={"height": 28, "width": 28}, crop_to_patches=False)
    vp = InternVLVideoProcessor(size={"height": 28, "width": 28})
    proc = InternVLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, image_seq_length=1,
                             chat_template=CHATML.replace("IMAGE_STR", "<IMG_CONTEXT>"))
    torch.manual_seed(0)
    return _save(out, InternVLForConditionalGeneration(cfg), proc)


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "llava": build_llava, "llava_next": build_llava_next, "llava_onevision": build_llava_onevision,
    "qwen2_vl": build_qwen2_vl, "paligemma": build_paligemma, "blip-2": build_blip2, "idefics": build_idefics, "idefics2": build_idefics2, "idefics3": build_idefics3,
    "internvl": build_internvl}
