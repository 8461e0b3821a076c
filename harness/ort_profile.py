"""Per-node latency of an ONNX model in ONNX Runtime (its own profiler), grouped into the layer kinds of
harness.profile, so a TVM artifact's kernels and ONNX Runtime's nodes can be compared kind by kind."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import pandas as pd

# ONNX Runtime op names (after its graph optimizations: QLinearConv, FusedConv, QGemm, ...) → layer kinds, first
# match wins; convolutions get their kind from the model's Conv node (`conv_kinds`)
ORT_KINDS = (("Conv", "convolution"), ("Gemm", "dense"), ("MatMul", "dense"), ("Pool", "pooling"),
             ("Transpose", "layout"), ("Reshape", "layout"), ("Flatten", "layout"), ("Reorder", "layout"),
             ("QuantizeLinear", "quantize"), ("DequantizeLinear", "quantize"), ("Add", "elementwise"),
             ("Mul", "elementwise"), ("Relu", "elementwise"), ("Clip", "elementwise"))
_SUFFIX = "_kernel_time"


def conv_kinds(model: onnx.ModelProto) -> dict[str, str]:
    """The layer kind of each Conv node of `model` by node name: `depthwise convolution` or `KxK convolution`
    from its weight (an initializer, or one behind DequantizeLinear) and `group`."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    kinds = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        weight = node.input[1]
        while weight not in shapes and weight in producers and producers[weight].op_type == "DequantizeLinear":
            weight = producers[weight].input[0]
        shape, group = shapes.get(weight), next((a.i for a in node.attribute if a.name == "group"), 1)
        if shape is None or len(shape) != 4:
            kinds[node.name] = "convolution"
        elif group > 1 and group == shape[0] and shape[1] == 1:
            kinds[node.name] = "depthwise convolution"
        else:
            kinds[node.name] = f"{shape[2]}x{shape[3]} convolution" if group == 1 else "convolution"
    return kinds


def _shared_path(a: str, b: str) -> int:
    """How many leading `/`-separated parts two node names share (exporters name nodes by module path)."""
    count = 0
    for x, y in zip(a.split("/"), b.split("/"), strict=False):
        if x != y:
            break
        count += 1
    return count


def node_kind(node: str, op: str, convs: dict[str, str]) -> str:
    """The layer kind of an ONNX Runtime node: its op's, refined for a convolution by the model's Conv nodes
    whose names share the most with it. ONNX Runtime names a fused node after a node it replaced: the Conv
    (`…/conv.0.0/Conv_token_4`: int8) or the activation after it (`…/conv.0.2/Relu_output_0_nchwc`: fp32);
    where the best-sharing Conv nodes differ in kind, it stays `convolution`."""
    kind = next((kind for key, kind in ORT_KINDS if key in op), "other")
    if kind != "convolution" or not convs:
        return kind
    shared = {name: _shared_path(node, name) for name in convs}
    best = max(shared.values())
    kinds = {convs[name] for name, count in shared.items() if count == best}
    return kinds.pop() if len(kinds) == 1 else kind


class OrtNodes:
    """An ONNX model in an ONNX Runtime session with its profiler on; `sample()` runs `runs` inferences (after
    `measure.SETTLE_SECONDS` of untimed ones: TVM's workers, timed just before, may still spin), `table()`
    gives each node's milliseconds per inference, median over the samples."""

    def __init__(self, onnx_path: Path, input_shape: tuple[int, ...], threads: int | None, runs: int,
                 warmup: int = 3) -> None:
        from harness.measure import ort_session

        self._dir = tempfile.TemporaryDirectory(prefix="harness-ort-profile-")
        self.session = ort_session(onnx_path, threads, profile_prefix=Path(self._dir.name) / "ort")
        self.feed = {self.session.get_inputs()[0].name:
                     np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)}
        self.convs = conv_kinds(onnx.load(str(onnx_path), load_external_data=False))
        self.runs = runs
        self.spans = [(warmup, 0)]  # per sample: (untimed, timed) inferences, all in the profile
        for _ in range(warmup):
            self.session.run(None, self.feed)

    def sample(self) -> None:
        from harness.measure import settle

        untimed = settle(lambda: self.session.run(None, self.feed))
        for _ in range(self.runs):
            self.session.run(None, self.feed)
        self.spans.append((untimed, self.runs))

    def _timed(self, durations: list[float]) -> list[float] | None:
        """A node's mean milliseconds in each sample, from its durations in all inferences (None when it did not
        run once per inference: a subgraph's node)."""
        if len(durations) != sum(untimed + timed for untimed, timed in self.spans):
            return None
        means, at = [], 0
        for untimed, timed in self.spans:
            at += untimed
            if timed:
                means.append(float(np.mean(durations[at:at + timed])))
            at += timed
        return means

    def table(self) -> pd.DataFrame:
        """Columns kernel (the node), kind, calls (1) and ms; the session's profile is read and removed."""
        try:
            events = json.loads(Path(self.session.end_profiling()).read_text())
        finally:
            self._dir.cleanup()
        durations: dict[str, list[float]] = defaultdict(list)
        ops = {}
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith(_SUFFIX):
                node = event["name"][:-len(_SUFFIX)]
                durations[node].append(event["dur"] / 1e3)
                ops[node] = event.get("args", {}).get("op_name", "")
        rows = []
        for node, times in durations.items():
            if (per_sample := self._timed(times)) is not None:
                rows.append({"kernel": node, "kind": node_kind(node, ops[node], self.convs), "calls": 1,
                             "ms": float(np.median(per_sample))})
        return pd.DataFrame(rows, columns=["kernel", "kind", "calls", "ms"])
