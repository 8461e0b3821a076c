"""The `quantize` step: int8 post-training static quantization with ONNX Runtime into a QDQ ONNX model.

`fp16` is the second dtype; it needs no calibration and is applied by the TVM compile stage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from harness import cache
from harness.compress.step import StepContext, StepResult
from harness.data import calibration_batches
from harness.errors import HarnessError
from harness.export import OnnxModel
from harness.progress import Progress
from harness.schema import content_hash
from harness.specs import CalibrationMethod, CompileOptions, QuantizeSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class QuantizeReport:
    path: Path
    quantize_nodes: int
    dequantize_nodes: int
    samples: int
    bytes: int


class _Reader:
    """ONNX Runtime CalibrationDataReader over numpy batches (kept, so that ORT may rewind)."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray], total: int, progress: bool) -> None:
        bar = Progress(total, "calibrate", "img", enabled=progress, leave=False)
        self.batches = []
        for batch in batches:
            self.batches.append({input_name: batch.astype(np.float32)})
            bar.update(len(batch))
        bar.close()
        self.samples = sum(len(b[input_name]) for b in self.batches)
        self._it: Iterator[dict[str, np.ndarray]] = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.batches)


def quantize_onnx(fp32_onnx: Path, out_path: Path, spec: QuantizeSpec, calibration: Iterable[np.ndarray], *,
                  input_name: str = "input", progress: bool = True) -> QuantizeReport:
    """Quantize `fp32_onnx` to a QDQ int8 model at `out_path`, calibrated on `calibration` batches."""
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if spec.dtype != "int8":
        raise HarnessError(f"quantize: dtype {spec.dtype!r} needs no ONNX quantization (the compiler applies it)")
    if not fp32_onnx.is_file():
        raise HarnessError(f"quantize: ONNX model not found: {fp32_onnx}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    prepared = out_path.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
    reader = _Reader(input_name, calibration, spec.calibration_samples, progress)
    method = {CalibrationMethod.MINMAX: OrtMethod.MinMax, CalibrationMethod.ENTROPY: OrtMethod.Entropy,
              CalibrationMethod.PERCENTILE: OrtMethod.Percentile}[spec.calibration]
    tmp = out_path.with_suffix(".tmp.onnx")
    quantize_static(
        str(prepared), str(tmp), reader, quant_format=QuantFormat.QDQ, per_channel=spec.per_channel,
        activation_type=QuantType.QInt8 if spec.symmetric_activations else QuantType.QUInt8,
        weight_type=QuantType.QInt8, calibrate_method=method, reduce_range=spec.reduce_range,
        extra_options={"ActivationSymmetric": spec.symmetric_activations, "WeightSymmetric": True},
    )
    prepared.unlink()
    onnx.checker.check_model(str(tmp))
    tmp.replace(out_path)
    ops = [n.op_type for n in onnx.load(str(out_path)).graph.node]
    log.info("quantized %s: %d QuantizeLinear, %d DequantizeLinear, %d calibration images",
             out_path.name, ops.count("QuantizeLinear"), ops.count("DequantizeLinear"), reader.samples)
    return QuantizeReport(path=out_path, quantize_nodes=ops.count("QuantizeLinear"),
                          dequantize_nodes=ops.count("DequantizeLinear"), samples=reader.samples,
                          bytes=out_path.stat().st_size)


@dataclass(frozen=True, kw_only=True, slots=True)
class Quantize:
    spec: QuantizeSpec
    acts_on: Literal["onnx"] = "onnx"

    def apply(self, fp32: OnnxModel, ctx: StepContext) -> StepResult:
        """int8: the calibrated QDQ model (cached beside `fp32` by the calibration settings); fp16: `fp32`,
        converted by the compiler."""
        spec = self.spec
        if spec.dtype == "fp16":
            return StepResult(output=fp32, dtype="fp16", options=CompileOptions(fp16=True))
        settings = {k: getattr(spec, k) for k in spec.__dataclass_fields__ if k != "integer"}
        if not spec.reduce_range:  # (added later: models quantized before it keep their cache key)
            del settings["reduce_range"]
        calibration_key = content_hash(settings)
        out = fp32.path.with_name(f"model.int8-{calibration_key}.onnx")
        with cache.locked(out):
            if cache.digest(out) is None:
                batches = calibration_batches(ctx.splits, spec.calibration_samples, batch_size=16)
                cache.write(out, lambda tmp: quantize_onnx(fp32.path, tmp, spec, batches, input_name=fp32.input_name,
                                                           progress=ctx.progress))
        return StepResult(output=OnnxModel(path=out, input_shape=fp32.input_shape, input_name=fp32.input_name),
                          dtype="int8", options=CompileOptions(integer=spec.integer),
                          report={"calibration": f"{spec.calibration.value}:{spec.calibration_samples}",
                                  "integer": spec.integer})
