"""Writing an encoder package: trace, check, and move into place atomically."""

import atexit
import json
import os
import shutil
import tempfile

import torch

from . import PACKAGE_VERSION


def scratch_folder(prefix="saeshare-"):
    """A temporary folder removed when the exporter exits, for files only needed while it runs
    (a tokenizer saved before it is copied into a package, a model config)."""
    folder = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


class Outputs(torch.nn.Module):
    """Wraps a callable returning a list of per-layer tensors so TorchScript sees a tuple."""

    def __init__(self, model, layers_of):
        super().__init__()
        self.model = model
        self.layers_of = layers_of

    def forward(self, *inputs):
        return tuple(self.layers_of(self.model, *inputs))


class ChannelsLast(torch.nn.Module):
    """A CNN whose weights and input are laid out channels-last (NHWC): oneDNN's convolutions run
    2-4x faster that way on CPU, and cuDNN's tensor-core kernels want it on GPU. The feature maps
    keep their NCHW shape and leave in channels-last strides: a copy back to NCHW would cost 5% of
    the forward, and the rows of an SAE fitted on positions (`[n, h*w, c]`) are a view of them."""

    def __init__(self, model):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x):
        return tuple(self.model(x.contiguous(memory_format=torch.channels_last)))


def follow_the_inputs_device(traced):
    """Makes a frozen trace run on the device of its inputs.

    A trace records the device of each tensor the model makes as a constant: transformers' mask
    code (``torch.arange(n, device=ids.device)``, ``mask.to(ids.device)``) becomes ``cpu`` when
    traced on the CPU, and the package then fails on a GPU, mixing CUDA and CPU tensors. Each such
    constant is replaced by the device of the first input, read when the graph runs."""
    graph = traced.graph
    constants = [n for n in graph.findAllNodes("prim::Constant") if isinstance(n.output().type(), torch._C.DeviceObjType)]
    if not constants:
        return
    first_input = next(v for v in graph.inputs() if isinstance(v.type(), torch._C.TensorType))
    device = graph.create("prim::device", [first_input], 1)
    device.output().setType(torch._C.DeviceObjType.get())
    device.insertBefore(next(iter(graph.nodes())))
    for constant in constants:
        constant.output().replaceAllUsesWith(device.output())
        constant.destroy()


def write_package(out, module, example_inputs, manifest, tokenizer_json=None, extra_files=None):
    """Traces ``module`` on ``example_inputs``, checks the trace on the same inputs, and writes
    the package to ``out`` (replacing nothing: ``out`` must not exist), with ``extra_files``
    (name -> bytes) beside it. The trace is frozen for inference. CNNs are traced channels-last
    (``ChannelsLast``), checked against the module as it was given."""
    if os.path.exists(out):
        raise SystemExit(f"{out}: already exists; remove it or choose another --out")
    module = module.eval()
    if manifest["outputs"] == "feature_maps":
        with torch.no_grad():
            expected_nchw = module(*example_inputs)
        module = ChannelsLast(module).eval()
        manifest = dict(manifest, memory_format="channels_last")
    with torch.no_grad():
        expected = module(*example_inputs)
        traced = torch.jit.trace(module, example_inputs, check_trace=False, strict=False)
        got = traced(*example_inputs)
        for layer, (a, b) in enumerate(zip(expected, got)):
            diff = (a - b).abs().max().item()
            if diff > 1e-5:
                raise SystemExit(f"tracing changed layer {layer} by {diff}; this model cannot be exported by tracing")
        # Frozen: the weights become constants of the graph, and each batch norm is folded into
        # the convolution before it (1.3-1.5x on the CNNs at batch 16 on 2 CPU cores).
        traced = torch.jit.freeze(traced)
        follow_the_inputs_device(traced)
        got = traced(*example_inputs)
    reference = expected_nchw if manifest["outputs"] == "feature_maps" else expected
    for layer, (a, b) in enumerate(zip(reference, got)):
        scale = a.abs().max().item() + 1e-6
        diff = (a - b).abs().max().item()
        if diff > 1e-4 * scale:
            raise SystemExit(f"channels-last layout or freezing changed layer {layer} by {diff} (of {scale}); this model cannot be exported")
    manifest = dict(manifest)
    manifest["format_version"] = PACKAGE_VERSION
    manifest["layers"] = [
        {"name": name, "width": int(t.shape[-1] if manifest["outputs"] == "tokens" else t.shape[1])}
        for name, t in zip(manifest["layer_names"], expected)
    ]
    del manifest["layer_names"]
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
    try:
        traced.save(os.path.join(staging, "model.pt"))
        if tokenizer_json is not None:
            shutil.copyfile(tokenizer_json, os.path.join(staging, "tokenizer.json"))
        for name, data in (extra_files or {}).items():
            with open(os.path.join(staging, name), "wb") as f:
                f.write(data)
        with open(os.path.join(staging, "encoder.json"), "w") as f:
            json.dump(manifest, f, indent=2)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
