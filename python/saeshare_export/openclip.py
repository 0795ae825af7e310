"""open_clip: the visual tower (ViTs: every residual block) and the text tower (every block of
the causal text transformer, pooled at the end-of-text token), with a tokenizer.json built from
open_clip's own BPE vocabulary and checked against open_clip's tokenizer."""

import gzip
import json
import os

import torch

from .package import Outputs, scratch_folder, write_package


def visual_layers(model, pixels):
    visual = model.visual
    x = visual._embeds(pixels)
    outputs = []
    for block in visual.transformer.resblocks:
        x = block(x)
        outputs.append(x)
    return outputs


def text_layers(model, input_ids, attention_mask):
    """The causal mask makes padding irrelevant to every token before it: the attention mask
    is only used by pooling (the end-of-text token is the last one it keeps)."""
    tower = getattr(model, "text", None)
    if tower is not None:  # CustomTextCLIP
        x, mask = tower._embeds(input_ids)
        blocks = tower.transformer.resblocks
    else:
        x = model.token_embedding(input_ids) + model.positional_embedding[: input_ids.shape[1]]
        mask = model.attn_mask[: input_ids.shape[1], : input_ids.shape[1]]
        blocks = model.transformer.resblocks
    outputs = []
    for block in blocks:
        x = block(x, attn_mask=mask)
        outputs.append(x)
    return outputs


def clip_tokenizer_json(folder):
    """A Hugging Face CLIP tokenizer built from open_clip's BPE merges (ids as open_clip's)."""
    import open_clip
    from transformers import CLIPTokenizerFast
    from open_clip.tokenizer import bytes_to_unicode

    bpe = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({token: i for i, token in enumerate(vocab)}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizerFast(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))
    tokenizer.save_pretrained(folder)
    return os.path.join(folder, "tokenizer.json")


def check_tokenizer(path, context_length):
    """Our tokenizer.json must give open_clip's ids, or the text tower sees other tokens."""
    import open_clip
    from tokenizers import Tokenizer

    captions = ["a red apple: apple, fruit, red", "Two  cats on a SOFA!", "naïve café, 東京 🍎", ""]
    theirs = open_clip.tokenize(captions, context_length=context_length)
    ours = Tokenizer.from_file(path)
    for caption, row in zip(captions, theirs):
        ids = ours.encode(caption).ids[:context_length]
        expected = [i for i in row.tolist() if i != 0]
        if ids != expected:
            raise SystemExit(f"tokenizer.json differs from open_clip's tokenizer on {caption!r}: {ids} != {expected}")


def export(arch, out, pretrained=None, tower="visual", name=None, model=None, notes=""):
    import open_clip

    if model is None:
        model = open_clip.create_model(arch, pretrained=pretrained)
    model = model.eval()
    manifest = {
        "name": name or f"{arch}-{tower}",
        "source": {"library": "open_clip", "family": arch, "model": pretrained or "random", "notes": notes},
        "outputs": "tokens",
    }
    if tower == "visual":
        visual = model.visual
        if not hasattr(visual, "transformer"):
            raise SystemExit(f"open_clip {arch}: only ViT visual towers are exported (this one is {type(visual).__name__})")
        size = visual.image_size if isinstance(visual.image_size, (tuple, list)) else (visual.image_size, visual.image_size)
        preprocess = model.visual.preprocess_cfg if hasattr(model.visual, "preprocess_cfg") else {}
        mean = list(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
        std = list(preprocess.get("std", open_clip.OPENAI_DATASET_STD))
        manifest.update(
            modality="image",
            default_pooling="cls",
            prefix_tokens=1,
            layer_names=[str(i + 1) for i in range(len(visual.transformer.resblocks))],
            image={
                # open_clip's eval transform: bicubic resize of the short side, centre crop.
                "resize": {"shortest_edge": int(size[0])},
                "resample": preprocess.get("interpolation", "bicubic"),
                "crop": {"height": int(size[0]), "width": int(size[1])},
                "crop_rounding": "round",
                "rescale": 1.0 / 255.0,
                "mean": mean,
                "std": std,
                "background": [255, 255, 255],
                "processor": "open_clip image_transform",
                "input_size": [int(size[0]), int(size[1])],
            },
        )
        return write_package(out, Outputs(model, visual_layers), (torch.randn(2, 3, *size),), manifest)
    context = int(model.context_length if hasattr(model, "context_length") else model.text.context_length)
    folder = scratch_folder("saeshare-openclip-tokenizer-")
    tokenizer = clip_tokenizer_json(folder)
    check_tokenizer(tokenizer, context)
    blocks = model.text.transformer.resblocks if hasattr(model, "text") else model.transformer.resblocks
    manifest.update(
        modality="text",
        default_pooling="eos",
        layer_names=[str(i + 1) for i in range(len(blocks))],
        # open_clip pads every caption to the context length with id 0.
        text={"max_length": context, "padding": "max_length", "causal": True, "pad_id": 0},
    )
    ids = torch.randint(1, 1000, (2, context))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return write_package(out, Outputs(model, text_layers), (ids * mask, mask), manifest, tokenizer)
