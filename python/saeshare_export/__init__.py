"""saeshare's model exporter: turns a model into an encoder package that saeshare runs in Rust.

An encoder package is a folder (FORMATS.md, "Encoder package"):

- ``model.pt``: TorchScript. Text: ``forward(input_ids: int64[B,T], attention_mask: int64[B,T])``;
  image: ``forward(pixel_values: float32[B,3,H,W])``. It returns a tuple with one tensor per
  exported layer: the residual stream after each block, ``[B,T,D]`` for transformers, or the
  feature map after each stage, ``[B,C,H,W]`` for CNNs. Pooling happens in Rust, so one package
  serves every pooling.
- ``encoder.json``: the manifest (name, modality, source, layers and widths, default pooling,
  preprocessing or tokenization).
- ``tokenizer.json``: a Hugging Face ``tokenizers`` file, for text encoders.
"""

PACKAGE_VERSION = 1
