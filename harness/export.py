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
    exported = onnx.load(str(tmp))
    if inline_constant_identities(exported.graph):
        onnx.save(exported, str(tmp))
    onnx.checker.check_model(str(tmp), full_check=True)
    tmp.replace(path)
    return OnnxModel(path=path, input_shape=(batch, 3, resolution, resolution))


def inline_constant_identities(graph: onnx.GraphProto) -> int:
    """Replace each Identity node of an initializer by an initializer of its own; returns how many.

    The TorchScript exporter of torch 2.11 shares equal constants through Identity nodes (the all-zero biases of
    an untrained model's folded BatchNorms, say), and ONNX Runtime's quantizer quantizes only biases that are
    initializers: the others stayed float ("Expected bias ... to be an initializer").
    """
    kept = {o.name for o in graph.output} | {i.name for i in graph.input}  # names the graph's users see
    count, sources = 0, set()
    while True:  # (an Identity of an inlined Identity is inlined next round)
        initializers = {t.name: t for t in graph.initializer if t.name not in kept}
        inlined = [n for n in graph.node if n.op_type == "Identity" and n.input[0] in initializers
                   and n.output[0] not in kept]
        if not inlined:
            break
        for node in inlined:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
            graph.node.remove(node)
            sources.add(node.input[0])
        count += len(inlined)
    used = {name for n in graph.node for name in n.input}
    for tensor in [t for t in graph.initializer if t.name in sources and t.name not in used]:
        graph.initializer.remove(tensor)
    return count
