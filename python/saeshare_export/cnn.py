"""CNNs (torchvision, timm) and timm ViTs. A CNN's layers are its stages: the feature map where
each resolution ends, pooled by global average in Rust."""

import torch

from .package import Outputs, write_package

# torchvision: the module after which each stage ends.
TORCHVISION_STAGES = {
    "resnet": ["layer1", "layer2", "layer3", "layer4"],
    "mobilenet_v2": ["features.3", "features.6", "features.13", "features.18"],
    "efficientnet": ["features.2", "features.3", "features.5", "features.8"],
    "convnext": ["features.1", "features.3", "features.5", "features.7"],
}

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def torchvision_preprocessing(resize=256, crop=224, resample="bilinear"):
    """torchvision's ImageClassification transform: resize the short side, centre crop (rounded),
    rescale to [0, 1], normalise with ImageNet statistics."""
    return {
        "resize": {"shortest_edge": resize},
        "resample": resample,
        "crop": {"height": crop, "width": crop},
        "crop_rounding": "round",  # torchvision's center_crop: int(round((size - crop) / 2))
        "rescale": 1.0 / 255.0,
        "mean": IMAGENET["mean"],
        "std": IMAGENET["std"],
        "background": [255, 255, 255],
        "processor": "torchvision ImageClassification",
        "input_size": [crop, crop],
    }


class Stages(torch.nn.Module):
    """Runs a torchvision model's children in order, keeping the outputs of the named stages."""

    def __init__(self, model, stages):
        super().__init__()
        self.model = model
        self.stages = stages

    def forward(self, x):
        outputs = []
        for name, module in self.flat():
            x = module(x)
            if name in self.stages:
                outputs.append(x)
            if len(outputs) == len(self.stages):
                break
        return tuple(outputs)

    def flat(self):
        for name, child in self.model.named_children():
            if name == "features" or (isinstance(child, torch.nn.Sequential) and any(s.startswith(name + ".") for s in self.stages)):
                for sub, grandchild in child.named_children():
                    yield f"{name}.{sub}", grandchild
            else:
                yield name, child


def stages_for(arch):
    for prefix, stages in TORCHVISION_STAGES.items():
        if arch.startswith(prefix):
            return stages
    raise SystemExit(f"torchvision {arch}: no stage list; known: {', '.join(TORCHVISION_STAGES)}")


def export_torchvision(arch, out, weights=None, name=None, notes=""):
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None)
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    stages = stages_for(arch)
    manifest = {
        "name": name or arch,
        "modality": "image",
        "source": {"library": "torchvision", "family": arch, "model": weights or "random", "notes": notes},
        "outputs": "feature_maps",
        "default_pooling": "gap",
        "image": torchvision_preprocessing(),
        "prefix_tokens": 0,
        "layer_names": stages,
    }
    return write_package(out, Stages(model.eval(), stages), (torch.randn(2, 3, 224, 224),), manifest)


def timm_vit_layers(model, x):
    x = model.patch_embed(x)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    outputs = []
    for block in model.blocks:
        x = block(x)
        outputs.append(x)
    return outputs


def timm_cnn_layers(model, x):
    final, stages = model.forward_intermediates(x)
    return [*stages, final]


def timm_cnn_stages(model, x):
    return model.forward_intermediates(x, intermediates_only=True)


def export_timm(arch, out, checkpoint=None, name=None, notes="", state_dict=None):
    import timm

    model = timm.create_model(arch, pretrained=False)
    is_vit = hasattr(model, "blocks") and hasattr(model, "patch_embed")
    if checkpoint or state_dict is not None:
        weights = state_dict if state_dict is not None else torch.load(checkpoint, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not k.startswith(("head", "classifier", "fc."))]
        if missing:
            raise SystemExit(f"timm {arch}: the checkpoint lacks {missing[:5]}...")
    model = model.eval()
    config = model.pretrained_cfg
    size = config.get("input_size", (3, 224, 224))[1:]
    crop_pct = config.get("crop_pct", 0.875)
    resample = config.get("interpolation", "bicubic")
    image = {
        "resize": {"shortest_edge": int(size[0] / crop_pct)},
        "resample": resample,
        "crop": {"height": size[0], "width": size[1]},
        "crop_rounding": "round",
        "rescale": 1.0 / 255.0,
        "mean": list(config.get("mean", IMAGENET["mean"])),
        "std": list(config.get("std", IMAGENET["std"])),
        "background": [255, 255, 255],
        "processor": "timm eval transform",
        "input_size": list(size),
    }
    if is_vit:
        layer_names = [str(i + 1) for i in range(len(model.blocks))]
        module = Outputs(model, timm_vit_layers)
        outputs, pooling, prefix = "tokens", "cls" if model.num_prefix_tokens else "mean", model.num_prefix_tokens
    else:
        # The stages timm reports as features, then the head's feature map (EfficientNet's
        # conv_head, 1280 wide) where it is more than the last stage: it is what the classifier
        # pools, so the last layer is the model's own image representation.
        layer_names = [info["module"] for info in model.feature_info]
        probe = torch.randn(1, 3, *size)
        with torch.no_grad():
            final, stages = model.forward_intermediates(probe)
        has_head = final.shape != stages[-1].shape or not torch.equal(final, stages[-1])
        module = Outputs(model, timm_cnn_layers if has_head else timm_cnn_stages)
        layer_names += ["head"] if has_head else []
        outputs, pooling, prefix = "feature_maps", "gap", 0
    manifest = {
        "name": name or arch,
        "modality": "image",
        "source": {"library": "timm", "family": arch, "model": checkpoint or ("given weights" if state_dict is not None else "random"), "notes": notes},
        "outputs": outputs,
        "default_pooling": pooling,
        "image": image,
        "prefix_tokens": prefix,
        "layer_names": layer_names,
    }
    return write_package(out, module, (torch.randn(2, 3, *size),), manifest)
