"""Checkpoints shipped in another layout, rebuilt as the library architecture they are an
instance of, so the ordinary exporters (cnn.export_timm, hf.export) can package them:

- EfficientNet-Lite0 in lukemelas' EfficientNet-PyTorch layout (``_blocks.3._expand_conv``) into
  timm's ``tf_efficientnet_lite0`` (``blocks.2.0.conv_pw``). The ``tf_`` variant because the
  weights were ported from TensorFlow: "same" padding and batch-norm epsilon 1e-3, as in the
  implementation they were published for;
- the DINOv2-small backbone inside an ONNX graph into transformers' ``Dinov2Model``. ONNX keeps
  the named parameters as initializers but bakes each linear layer's weight, transposed, into an
  anonymous ``MatMul`` input; the MatMul node's name is the module path, which names it back."""


import torch

# tf_efficientnet_lite0: blocks per stage.
LITE0_STAGES = [1, 2, 2, 3, 3, 4, 1]

_LUKEMELAS_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# A block with an expansion convolution is timm's InvertedResidual; without, DepthwiseSeparableConv.
_LUKEMELAS_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LUKEMELAS_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def lukemelas_to_timm(state_dict, stages=LITE0_STAGES):
    """Renames a lukemelas EfficientNet state dict to timm's names; the tensors are unchanged."""
    position = [(stage, index) for stage, count in enumerate(stages) for index in range(count)]
    blocks = {int(key.split(".")[1]) for key in state_dict if key.startswith("_blocks.")}
    if len(blocks) != len(position):
        raise SystemExit(f"EfficientNet checkpoint has {len(blocks)} blocks; this architecture has {len(position)}")
    renamed = {}
    for key, tensor in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            block = int(parts[1])
            stage, index = position[block]
            names = _LUKEMELAS_INVERTED if f"_blocks.{block}._expand_conv.weight" in state_dict else _LUKEMELAS_SEPARABLE
            renamed[".".join(["blocks", str(stage), str(index), names[parts[2]], *parts[3:]])] = tensor
        else:
            renamed[".".join([_LUKEMELAS_TOP[parts[0]], *parts[1:]])] = tensor
    return renamed


def _onnx_constant(graph, node_name):
    from onnx import numpy_helper

    for node in graph.node:
        if node.name == node_name:
            return numpy_helper.to_array(node.attribute[0].t)
    raise SystemExit(f"the ONNX graph has no node {node_name}: not the DINOv2 export this rebuild reads")


def onnx_dinov2_state(graph, prefix="backbone."):
    """The Dinov2Model state dict held by an ONNX graph whose backbone modules sit under ``prefix``."""
    from onnx import numpy_helper

    initializers = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    state = {name[len(prefix):]: tensor for name, tensor in initializers.items() if name.startswith(prefix)}
    module_path = "/" + prefix.rstrip(".") + "/"
    for node in graph.node:
        if node.op_type == "MatMul" and node.name.startswith(module_path) and node.input[1] in initializers:
            module = node.name[len(module_path):].rsplit("/", 1)[0].replace("/", ".")
            state[f"{module}.weight"] = initializers[node.input[1]].t().contiguous()
    # Position embeddings: the CLS row and the patch grid, split by the export around the
    # interpolation; their anonymous initializers are the only [1, n, width] tensors left.
    width = state["embeddings.cls_token"].shape[-1]
    rows = [t for name, t in initializers.items() if not name.startswith(prefix) and t.dim() == 3 and t.shape[-1] == width]
    rows.sort(key=lambda t: t.shape[1])
    if len(rows) != 2 or rows[0].shape[1] != 1:
        raise SystemExit(f"expected a CLS and a patch-grid position embedding in the ONNX graph, found shapes {[tuple(t.shape) for t in rows]}")
    state["embeddings.position_embeddings"] = torch.cat(rows, dim=1)
    state["embeddings.mask_token"] = torch.zeros(1, width)  # unused at inference; absent from the export
    return state


# transformers 5 renamed DINOv2's attention projections; ONNX exports from before keep the old names.
_ATTENTION_RENAMES = {
    "attention.attention.query.": "attention.q_proj.",
    "attention.attention.key.": "attention.k_proj.",
    "attention.attention.value.": "attention.v_proj.",
    "attention.output.dense.": "attention.o_proj.",
}


def _current_name(name, expected):
    if name in expected:
        return name
    for old, new in _ATTENTION_RENAMES.items():
        name = name.replace(old, new)
    return name


def dinov2_from_onnx(onnx_path, folder):
    """Writes ``folder``: the ONNX file's DINOv2 backbone as a transformers Dinov2Model with
    DINOv2's own image processor, ready for hf.export."""
    import onnx
    import transformers

    graph = onnx.load(onnx_path).graph
    state = onnx_dinov2_state(graph)
    width = state["embeddings.cls_token"].shape[-1]
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    patch = state["embeddings.patch_embeddings.projection.weight"].shape[-1]
    grid = int(round((state["embeddings.position_embeddings"].shape[1] - 1) ** 0.5))
    heads = int(_onnx_constant(graph, "/backbone/encoder/layer.0/attention/attention/Constant_2")[0])
    config = transformers.Dinov2Config(
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        mlp_ratio=state["encoder.layer.0.mlp.fc1.weight"].shape[0] // width,
        patch_size=patch,
        image_size=grid * patch,
        layer_norm_eps=float(_onnx_constant(graph, "/backbone/encoder/layer.0/norm1/Constant_1")),
    )
    model = transformers.Dinov2Model(config)
    expected = model.state_dict().keys()
    state = {_current_name(name, expected): tensor for name, tensor in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"ONNX DINOv2 rebuild: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.save_pretrained(folder)
    # DINOv2's processor: bicubic, short side to 256, centre crop 224, ImageNet statistics.
    transformers.BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return folder
