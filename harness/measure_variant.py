"""Measure one compiled variant on its device: agreement with the reference runtime, accuracy, latency, and
the PyTorch and ONNX Runtime peers on the same input; the result is one `Row`."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from harness.build import Compiled
from harness.data import DataSplits, first_batch
from harness.device import DeviceProfile
from harness.errors import HarnessError
from harness.measure import (
    Executor,
    LocalExecutor,
    accuracy,
    gpu_info,
    latency_stats,
    max_abs_diff,
    ort_has_cuda,
    ort_latency,
    ort_session,
    torch_gpu_latency,
    torch_latency,
)
from harness.models import model_cost
from harness.noise import NoiseLog
from harness.results import Row
from harness.specs import MeasureSpec

log = logging.getLogger(__name__)

EMULATED_REPEATS = 3  # timing repeats on an emulated board


def _executor(compiled: Compiled, profile: DeviceProfile) -> tuple[Executor, bool, str | None]:
    """Load the artifact locally or on a board of the device; returns (executor, emulated, board name)."""
    if profile.is_remote:
        from harness.remote import remote_executor

        executor, emulated = remote_executor(profile, compiled.artifact.path)
        return executor, emulated, executor.info.get("name")
    try:
        return LocalExecutor(compiled.artifact.path, profile.thread_count, profile.gpu_index), False, None
    except HarnessError as exc:
        raise HarnessError(f"device {profile.name}: {exc}; the compiled artifact is kept at "
                           f"{compiled.artifact.path}") from None


def _check_agreement(compiled: Compiled, executor: Executor, batch: np.ndarray) -> float:
    """max |TVM − reference| on one batch: PyTorch for fp32, ONNX Runtime (same QDQ model) for int8."""
    exported, recipe = compiled.exported, compiled.recipe
    tvm_out = executor.run(batch)
    if exported.dtype == "fp32":
        with torch.no_grad():
            ref = exported.model(torch.from_numpy(batch)).numpy()
    else:
        sess = ort_session(exported.onnx.path, None, exact=True)
        ref = sess.run(None, {sess.get_inputs()[0].name: batch})[0]
    diff = max_abs_diff(tvm_out, ref)
    scale = max(1.0, float(np.abs(ref).max()))
    tol = recipe.measure.tolerance if exported.dtype == "fp32" else recipe.measure.int8_tolerance
    if diff > tol * scale:
        raise HarnessError(
            f"recipe {recipe.name}: TVM output differs from the reference by {diff:.3g} "
            f"(> tolerance {tol} × {scale:.3g}); the compiled artifact is wrong"
        )
    return diff


def _cpu_peers(compiled: Compiled, batch: np.ndarray, spec: MeasureSpec, threads: int | None,
               noise: NoiseLog) -> dict[str, Any]:
    """PyTorch eager and ONNX Runtime on this host's CPU, with the artifact's thread count."""
    model, onnx = compiled.exported.model, compiled.exported.onnx.path
    return {"torch_latency_ms": noise.measure("pytorch", lambda: torch_latency(model, batch, spec, threads)).median_ms,
            "ort_latency_ms": noise.measure("onnxruntime", lambda: ort_latency(onnx, batch, spec, threads)).median_ms}


def _gpu_peers(compiled: Compiled, batch: np.ndarray, spec: MeasureSpec, gpu: int, noise: NoiseLog
               ) -> dict[str, Any]:
    """PyTorch eager fp32 and fp16 (autocast, channels_last) and ONNX Runtime's CUDA provider on GPU `gpu`,
    with the GPU's name and versions."""
    model, onnx = compiled.exported.model, compiled.exported.onnx.path
    row: dict[str, Any] = gpu_info(gpu)
    row["torch_latency_ms"] = noise.measure("pytorch", lambda: torch_gpu_latency(model, batch, spec, gpu)).median_ms
    row["torch_fp16_latency_ms"] = noise.measure(
        "pytorch fp16", lambda: torch_gpu_latency(model, batch, spec, gpu, fp16=True)).median_ms
    if ort_has_cuda():
        row["ort_latency_ms"] = noise.measure("onnxruntime",
                                              lambda: ort_latency(onnx, batch, spec, None, gpu)).median_ms
    else:
        row["ort_latency_ms"], row["ort_note"] = None, "onnxruntime has no CUDA provider (install onnxruntime-gpu)"
    return row


def measure_variant(compiled: Compiled, profile: DeviceProfile, splits: DataSplits, progress: bool) -> Row:
    """Accuracy and latency of the compiled artifact, with PyTorch and ONNX Runtime peers; one result row."""
    exported, artifact, recipe = compiled.exported, compiled.artifact, compiled.recipe
    spec = recipe.measure
    executor, emulated, board = _executor(compiled, profile)
    batch = first_batch(splits, spec.batch)
    diff = _check_agreement(compiled, executor, batch)
    where = "remote" if profile.is_remote else "local"
    log.info("evaluating %s on %d images (%s)", recipe.name, len(splits.val), where)
    acc = accuracy(executor, splits.val, spec.batch, splits.num_classes, progress, desc=f"eval {recipe.name}")
    if emulated and spec.repeats > EMULATED_REPEATS:  # qemu's latencies say nothing of the board's: time briefly
        spec = replace(spec, repeats=EMULATED_REPEATS, warmup=min(spec.warmup, 1))
    log.info("top-1 %.4f; timing %d repeats", acc.top1, spec.repeats)
    noise = NoiseLog()
    # on a board, this host's load is not the board's (nor, emulated, is qemu's work: it is what is timed)
    lat = noise.measure("tvm", lambda: latency_stats(executor.time(batch, spec)), on_this_host=not profile.is_remote)
    threads = profile.thread_count
    peers: dict[str, Any] = {}
    if spec.peers and not profile.is_remote:
        peers = _gpu_peers(compiled, batch, spec, profile.gpu_index, noise) if profile.gpu_index is not None \
            else _cpu_peers(compiled, batch, spec, threads, noise)
    noisy = noise.reason()
    if noisy is not None:
        log.warning("%s: noisy measurement (%s); its latencies are not to be trusted: rerun on an idle host",
                    recipe.name, noisy)
    cost = model_cost(exported.model, recipe.resolution)
    return Row(
        recipe=recipe.name, recipe_key=recipe.key(), steps=recipe.steps_summary(), model=recipe.model.name,
        width_mult=recipe.width, resolution=recipe.resolution, dataset=str(recipe.data.name),
        num_classes=splits.num_classes, dtype=exported.dtype, integer=exported.report.get("integer"),
        prune_ratio=exported.report.get("prune_ratio"), calibration=exported.report.get("calibration"),
        params=cost.params, macs=cost.macs, onnx_bytes=exported.onnx.bytes, artifact_bytes=artifact.bytes,
        device=profile.name, target=artifact.target, remote=profile.is_remote, emulated=emulated, board=board,
        threads=threads, batch=spec.batch, top1=acc.top1, top5=acc.top5, eval_samples=acc.samples,
        latency_ms_median=lat.median_ms, latency_ms_mean=lat.mean_ms, latency_ms_p90=lat.p90_ms,
        latency_ms_min=lat.min_ms, latency_ms_std=lat.std_ms, repeats=lat.repeats, latency_cv=lat.cv,
        torch_cv=noise.cvs.get("pytorch"), ort_cv=noise.cvs.get("onnxruntime"), host_busy=noise.busy,
        noisy=noisy,
        images_per_s=spec.batch / (lat.median_ms / 1e3), max_abs_diff=diff, compile_s=artifact.compile_seconds,
        **artifact.report.row_fields(), **peers,
    )
