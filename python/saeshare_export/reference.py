"""Reference preprocessing, by the Python libraries themselves, for the Rust parity tests.

    python -m saeshare_export.reference OUT IMAGE...

Writes ``OUT/specs.json`` (each processor's settings as an encoder manifest states them) and
``OUT/pixels.safetensors`` (``<processor>.<i>``: the model input for image ``i``, 3 x H x W)."""

import json
import os
import sys

import torch
import transformers
from PIL import Image
from safetensors.torch import save_file

from . import cnn, hf
from .package import scratch_folder

PROCESSORS = {
    # CLIP's: bicubic, short side to 224, centre crop 224 (transformers' default backend).
    "clip": transformers.CLIPImageProcessor(),
    # ViT's: bilinear straight to 224 x 224.
    "vit": transformers.ViTImageProcessor(),
    # DINOv2's: bicubic, short side to 256, centre crop 224.
    "dinov2": transformers.BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, image_mean=cnn.IMAGENET["mean"], image_std=cnn.IMAGENET["std"]),
    # SigLIP's: bicubic straight to 224 x 224, mean and std 0.5.
    "siglip": transformers.SiglipImageProcessor(),
}


def on_white(image):
    """RGB with transparency composited on white: transformers' convert_rgb, which saeshare applies
    for every family (processors without it would fail on RGBA or keep the hidden colours), a PNG's
    transparent colour (info["transparency"]) included."""
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


def torchvision_pixels(image):
    """torchvision's ImageNet evaluation transform, as the MobileNetV2 weights define it."""
    import torchvision

    transform = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    return transform(on_white(image))


def main(out, images):
    os.makedirs(out, exist_ok=True)
    specs, pixels = {}, {}
    for name, processor in PROCESSORS.items():
        folder = scratch_folder()
        processor.save_pretrained(folder)
        spec = hf.image_preprocessing(folder, None)
        size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
        spec["input_size"] = [size["height"], size["width"]]
        specs[name] = spec
        for i, path in enumerate(images):
            image = on_white(Image.open(path))
            pixels[f"{name}.{i}"] = processor(images=image, return_tensors="pt")["pixel_values"][0].contiguous()
    specs["torchvision"] = cnn.torchvision_preprocessing()
    for i, path in enumerate(images):
        pixels[f"torchvision.{i}"] = torchvision_pixels(Image.open(path)).contiguous()
    save_file(pixels, os.path.join(out, "pixels.safetensors"))
    with open(os.path.join(out, "specs.json"), "w") as f:
        json.dump(specs, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
