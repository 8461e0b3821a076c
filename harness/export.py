"""Export a PyTorch model to an ONNX file (checked with onnx.checker)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17


@dataclass(frozen=True, kw_only=True, slots=True)
class OnnxModel:
    """An exported model: file, input name and the NCHW shape it is compiled for."""

    path: Path
    input_shape: tuple[int, int, int, int]
    input_name: str = INPUT_NAME

    @property
    def bytes(self) -> int:
        return self.path.stat().st_size


def export_onnx(model: nn.Module, path: Path, *, resolution: int, batch: int = 1) -> OnnxModel:
    """Export `model` (eval mode, BatchNorm folded by the exporter) with a dynamic batch axis."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = torch.zeros(batch, 3, resolution, resolution)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        # The TorchScript exporter folds BatchNorm into the convolutions and gives the plain
        # Conv/Relu/Gemm graph that ONNX Runtime's quantizer and TVM's importer handle best.
        torch.onnx.export(
            model, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            opset_version=OPSET, dynamo=False, do_constant_folding=True,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    onnx.checker.check_model(str(tmp), full_check=True)
    tmp.replace(path)
    return OnnxModel(path=path, input_shape=(batch, 3, resolution, resolution))
