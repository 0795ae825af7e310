"""Hugging Face transformers: CLIP and SigLIP towers, ViT, DINOv2, BERT, DeBERTa, MPNet, and any
AutoModel whose forward returns hidden states."""

import json
import os

import torch
import transformers
from transformers import AutoConfig

from .package import Outputs, scratch_folder, write_package

# model_type -> (modality, class name, default pooling). Pooling follows how each model was
# trained: never token 0 where token 0 carries nothing.
FAMILIES = {
    "clip_text_model": ("text", "CLIPTextModel", "eos"),  # causal: only EOS has seen the caption
    "clip_vision_model": ("image", "CLIPVisionModel", "cls"),
    "siglip_text_model": ("text", "SiglipTextModel", "last"),  # trained padded to 64, last position
    "siglip_vision_model": ("image", "SiglipVisionModel", "mean"),  # no CLS token
    "vit": ("image", "ViTModel", "cls"),
    "dinov2": ("image", "Dinov2Model", "cls"),
    "dinov2_with_registers": ("image", "Dinov2WithRegistersModel", "cls"),
    "bert": ("text", "BertModel", "cls"),
    "deberta": ("text", "DebertaModel", "cls"),
    "deberta-v2": ("text", "DebertaV2Model", "cls"),
    "mpnet": ("text", "MPNetModel", "cls"),
    "roberta": ("text", "RobertaModel", "cls"),
}

# Dual-encoder checkpoints: the tower's own model_type.
TOWERS = {
    ("clip", "text"): "clip_text_model",
    ("clip", "vision"): "clip_vision_model",
    ("siglip", "text"): "siglip_text_model",
    ("siglip", "vision"): "siglip_vision_model",
}

RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def family_of(config, tower):
    model_type = config.model_type
    if (model_type, tower) in TOWERS:
        return TOWERS[(model_type, tower)]
    if model_type in ("clip", "siglip"):
        raise SystemExit(f"{model_type} has a text and a vision tower: choose one with --tower text|vision")
    return model_type


def load(path, family):
    if family in FAMILIES:
        cls = getattr(transformers, FAMILIES[family][1])
    else:
        cls = transformers.AutoModel
    model = cls.from_pretrained(path, attn_implementation="eager")
    return model.eval()


def text_layers(model, input_ids, attention_mask):
    return model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states[1:]


def image_layers(model, pixel_values):
    return model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[1:]


def sentence_transformers_pooling(path):
    """The pooling a sentence-transformers model was trained with, if it is one."""
    pooling = os.path.join(path, "1_Pooling", "config.json")
    if not os.path.exists(pooling):
        return None
    with open(pooling) as f:
        config = json.load(f)
    for key, name in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"), ("pooling_mode_lasttoken", "last")):
        if config.get(key):
            return name
    return None


def sentence_transformers_max_length(path):
    config = os.path.join(path, "sentence_bert_config.json")
    if not os.path.exists(config):
        return None
    with open(config) as f:
        return json.load(f).get("max_seq_length")


def pad_id(path):
    """The id the model's tokenizer pads with (its pad token, else its end token, else 0)."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, use_fast=True)
    except Exception:  # a tokenizer.json alone: read its padding or [PAD] entry
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        if tokenizer.padding:
            return int(tokenizer.padding["pad_id"])
        return int(tokenizer.token_to_id("[PAD]") or tokenizer.token_to_id("<pad>") or 0)
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def image_preprocessing(path, config):
    """The image processor's settings, as the manifest states them for the Rust side."""
    processor = transformers.AutoImageProcessor.from_pretrained(path)
    size = dict((k, v) for k, v in dict(processor.size).items() if v is not None)
    crop = processor.crop_size if getattr(processor, "do_center_crop", False) else None
    crop = dict((k, v) for k, v in dict(crop).items() if v is not None) if crop else None
    resample = processor.resample
    resample = RESAMPLE.get(int(resample), "bicubic") if resample is not None else "bicubic"
    return {
        "resize": size if getattr(processor, "do_resize", True) else None,
        "resample": resample,
        "crop": crop,
        "crop_rounding": "floor",  # transformers' center_crop: (size - crop) // 2
        "rescale": float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0,
        "mean": [float(x) for x in processor.image_mean] if getattr(processor, "do_normalize", True) else [0.0, 0.0, 0.0],
        "std": [float(x) for x in processor.image_std] if getattr(processor, "do_normalize", True) else [1.0, 1.0, 1.0],
        "background": [255, 255, 255],
        "processor": type(processor).__name__,
    }


def processed_size(image):
    """The side of the square the processor outputs (its crop, else a fixed resize), if known."""
    for spec in (image["crop"], image["resize"]):
        if spec and spec.get("height") and spec.get("height") == spec.get("width"):
            return int(spec["height"])
    return None


def tokenizer_file(path):
    """A tokenizer.json for the model: the folder's own, or one saved from its fast tokenizer."""
    own = os.path.join(path, "tokenizer.json")
    if os.path.exists(own):
        return own
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, use_fast=True)
    folder = scratch_folder("saeshare-tokenizer-")
    tokenizer.save_pretrained(folder)
    return os.path.join(folder, "tokenizer.json")


def export(path, out, tower=None, name=None, pooling=None, max_length=None, source=None, notes=None):
    config = AutoConfig.from_pretrained(path)
    family = family_of(config, tower)
    model = load(path, family)
    modality, _, default_pooling = FAMILIES.get(family, ("text", "AutoModel", "mean"))
    text_config = getattr(config, "text_config", None) if tower == "text" else None
    vision_config = getattr(config, "vision_config", None) if tower == "vision" else None
    manifest = {
        "name": name or os.path.basename(os.path.normpath(path)),
        "modality": modality,
        "source": {"library": "transformers", "family": family, "model": source or str(path), "notes": notes or ""},
        "outputs": "tokens",
        "layer_names": [],
    }
    if modality == "text":
        inner = text_config or config
        limit = getattr(inner, "max_position_embeddings", 512)
        padding = "longest"
        if family == "clip_text_model":
            limit = min(limit, 77)
        if family == "siglip_text_model":
            padding, limit = "max_length", 64
        manifest["default_pooling"] = pooling or sentence_transformers_pooling(path) or default_pooling
        limit = sentence_transformers_max_length(path) or limit
        manifest["text"] = {
            "max_length": int(max_length or limit),
            "padding": padding,
            "causal": family == "clip_text_model",
            "pad_id": pad_id(path),
        }
        layers = int(inner.num_hidden_layers)
        manifest["layer_names"] = [str(i + 1) for i in range(layers)]
        ids = torch.randint(5, 100, (2, 9))
        mask = torch.ones_like(ids)
        mask[1, 6:] = 0  # trace with padding, so the mask's path is in the graph
        module = Outputs(model, text_layers)
        written = write_package(out, module, (ids, mask), manifest, tokenizer_file(path))
    else:
        inner = vision_config or config
        manifest["default_pooling"] = pooling or default_pooling
        registers = int(getattr(inner, "num_register_tokens", 0) or 0)
        manifest["image"] = image_preprocessing(path, config)
        # What the processor hands the model, which is not always the config's image_size:
        # DINOv2 is configured at 518 and interpolates its position embeddings to a 224 crop.
        size = processed_size(manifest["image"]) or int(inner.image_size)
        manifest["image"]["input_size"] = [size, size]
        manifest["prefix_tokens"] = 0 if family == "siglip_vision_model" else 1 + registers
        layers = int(inner.num_hidden_layers)
        manifest["layer_names"] = [str(i + 1) for i in range(layers)]
        pixels = torch.randn(2, 3, size, size)
        module = Outputs(model, image_layers)
        written = write_package(out, module, (pixels,), manifest)
    return written
