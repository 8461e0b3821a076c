"""Measure stage: accuracy of the compiled artifact, latency statistics, and PyTorch / ONNX Runtime peers."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from harness.data import make_loader
from harness.errors import HarnessError
from harness.noise import spread
from harness.progress import progress_over
from harness.specs import MeasureSpec


@dataclass(frozen=True, kw_only=True, slots=True)
class LatencyStats:
    """Latency of one inference in milliseconds over `repeats` timed repeats."""

    median_ms: float
    mean_ms: float
    p90_ms: float
    min_ms: float
    std_ms: float
    spread: float  # robust relative spread, see `harness.noise.spread`: one slow call does not inflate it
    repeats: int

    @property
    def cv(self) -> float:
        """Coefficient of variation (std / mean) of the repeats."""
        return self.std_ms / self.mean_ms if self.mean_ms > 0 else 0.0


def latency_stats(seconds: Sequence[float]) -> LatencyStats:
    """The one place statistics are computed: median, mean, p90, min, std (ms) of per-repeat times."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no timings")
    return LatencyStats(
        median_ms=float(np.median(ms)),
        mean_ms=float(ms.mean()),
        p90_ms=float(np.percentile(ms, 90)),
        min_ms=float(ms.min()),
        std_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        spread=spread(ms),
        repeats=int(ms.size),
    )


class Executor(Protocol):
    """A loaded artifact: local (harness.measure.LocalExecutor) or remote over RPC (harness.remote)."""

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def time(self, batch: np.ndarray, spec: MeasureSpec) -> list[float]: ...


class LocalExecutor:
    """Runs a compiled shared library in this process with the Relax VM, on the CPU or on CUDA GPU `gpu`."""

    def __init__(self, lib_path: Path, threads: int | None = None, gpu: int | None = None) -> None:
        import tvm
        from tvm import relax

        set_tvm_threads(threads)
        self._tvm = tvm
        self.device = tvm.cpu() if gpu is None else cuda_device(gpu)
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), self.device)

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = self.vm["main"](self._tvm.runtime.tensor(np.ascontiguousarray(batch), self.device))
        return out.numpy()

    def bind(self, batch: np.ndarray) -> Callable[[], object]:
        """A zero-argument call that runs the model on `batch` (input copied to the device once)."""
        self.vm.set_input("main", self._tvm.runtime.tensor(np.ascontiguousarray(batch), self.device))
        return lambda: self.vm.invoke_stateful("main")

    def time(self, batch: np.ndarray, spec: MeasureSpec) -> list[float]:
        call = self.bind(batch)
        for _ in range(spec.warmup):
            call()
        timer = self.vm.time_evaluator("invoke_stateful", self.device, number=spec.number, repeat=spec.repeats)
        return list(timer("main").results)


def cuda_device(index: int):  # noqa: ANN201 (tvm.runtime.Device)
    """TVM's CUDA device `index`, or a one-line error when this host has none."""
    import tvm

    device = tvm.cuda(index)
    if not device.exist:
        raise HarnessError(f"no CUDA device {index} found on this host (no NVIDIA GPU, or its driver is not loaded)")
    return device


def gpu_info(index: int) -> dict[str, str | None]:
    """Name, compute capability, driver and CUDA versions of CUDA GPU `index`, for the row."""
    import subprocess

    device = cuda_device(index)
    driver = None
    try:
        driver = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"gpu_name": device.device_name, "gpu_compute_capability": device.compute_version,
            "gpu_driver": driver, "cuda_version": torch.version.cuda}


def set_tvm_threads(threads: int | None) -> None:
    """Size TVM's CPU thread pool (None: leave TVM's default, all cores)."""
    if threads is None:
        return
    import tvm

    os.environ["TVM_NUM_THREADS"] = str(threads)
    tvm.get_global_func("runtime.config_threadpool")(1, threads)  # 1: all (big) cores, `threads` workers


@dataclass(frozen=True, kw_only=True, slots=True)
class Accuracy:
    top1: float
    top5: float | None  # None when there are 5 classes or fewer
    samples: int


def accuracy(executor: Executor, dataset: Dataset, batch: int, num_classes: int,
             progress: bool = True, desc: str = "eval") -> Accuracy:
    """Top-1/top-5 of the compiled artifact on `dataset` (last partial batch padded with zeros)."""
    top1 = top5 = total = 0
    for images, labels in progress_over(make_loader(dataset, batch), desc, "batch", enabled=progress, leave=False):
        x = images.numpy()
        n = len(x)
        if n < batch:
            x = np.concatenate([x, np.zeros((batch - n, *x.shape[1:]), dtype=x.dtype)])
        logits = executor.run(x)[:n]
        ranked = np.argsort(-logits, axis=1)
        y = labels.numpy()
        top1 += int((ranked[:, 0] == y).sum())
        top5 += int((ranked[:, :5] == y[:, None]).any(axis=1).sum())
        total += n
    return Accuracy(top1=top1 / total, top5=top5 / total if num_classes > 5 else None, samples=total)


def time_callable(fn: Callable[[], object], spec: MeasureSpec) -> list[float]:
    """Per-repeat mean wall time (s) of `fn` after warm-up, the way TVM's time evaluator counts."""
    for _ in range(spec.warmup):
        fn()
    times = []
    for _ in range(spec.repeats):
        start = time.perf_counter()
        for _ in range(spec.number):
            fn()
        times.append((time.perf_counter() - start) / spec.number)
    return times


SETTLE_SECONDS = 0.1
"""Untimed calls of a runtime before it is timed beside others. A runtime run just before keeps its idle workers
spinning on the cores for a while: on 2 cores, TVM timed right after ONNX Runtime took 4× its time (9.2 against
2.3 ms), ONNX Runtime after PyTorch 1.3×, ONNX Runtime's profiled nodes right after TVM's kernels twice their
time; after 0.1 s of its own calls each was back to its time alone (Xeon, 2 threads)."""


def settle(fn: Callable[[], object]) -> int:
    """Call `fn` untimed for `SETTLE_SECONDS` (at least once); returns how many times it was called."""
    end = time.perf_counter() + SETTLE_SECONDS
    fn()
    calls = 1
    while time.perf_counter() < end:
        fn()
        calls += 1
    return calls


def torch_call(model: nn.Module, batch: np.ndarray) -> Callable[[], object]:
    """One PyTorch eager inference of `batch` (on the threads torch is set to), to time."""
    x = torch.from_numpy(batch)

    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run


def torch_latency(model: nn.Module, batch: np.ndarray, spec: MeasureSpec, threads: int | None) -> LatencyStats:
    """PyTorch eager latency on this host with the same thread count."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return latency_stats(time_callable(torch_call(model, batch), spec))
    finally:
        torch.set_num_threads(previous)


def torch_gpu_latency(model: nn.Module, batch: np.ndarray, spec: MeasureSpec, gpu: int, *,
                      fp16: bool = False) -> LatencyStats:
    """PyTorch eager latency on CUDA GPU `gpu` (synchronised); `fp16`: autocast to float16, channels_last."""
    import copy

    device = torch.device("cuda", gpu)
    net = copy.deepcopy(model).to(device).eval()
    x = torch.from_numpy(batch).to(device)
    if fp16:
        net, x = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)

    def run() -> None:
        with torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
            net(x)
        torch.cuda.synchronize(device)

    with torch.inference_mode():
        return latency_stats(time_callable(run, spec))


def ort_session(onnx_path: Path, threads: int | None, gpu: int | None = None, *, exact: bool = False,  # noqa: ANN201
                profile_prefix: Path | None = None):
    """An ONNX Runtime session (CPU with `threads` intra-op threads, or the CUDA provider on GPU `gpu`).

    `exact`: graph optimizations off, so a QDQ model runs as written (dequantize → float op → quantize)
    instead of through fused integer kernels; those saturate 16-bit sums on x86 CPUs without VNNI, and
    are no reference there. For checking agreement, not for timing.
    `profile_prefix`: ONNX Runtime's profiler on, its JSON written there (harness.ort_profile).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    if exact:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"] if gpu is None else [("CUDAExecutionProvider", {"device_id": gpu})]
    return ort.InferenceSession(str(onnx_path), opts, providers=providers)


def ort_has_cuda() -> bool:
    """Whether the installed ONNX Runtime has its CUDA provider (the onnxruntime-gpu package)."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def ort_call(onnx_path: Path, batch: np.ndarray, threads: int | None, gpu: int | None = None) -> Callable[[], list]:
    """One ONNX Runtime inference of `batch` (a session on this host's `threads`, or on GPU `gpu`), to time."""
    sess = ort_session(onnx_path, threads, gpu)
    feed = {sess.get_inputs()[0].name: batch}
    return lambda: sess.run(None, feed)


def ort_latency(onnx_path: Path, batch: np.ndarray, spec: MeasureSpec, threads: int | None,
                gpu: int | None = None) -> LatencyStats:
    """ONNX Runtime latency of the same ONNX file on this host (same thread count) or on GPU `gpu`."""
    return latency_stats(time_callable(ort_call(onnx_path, batch, threads, gpu), spec))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over all elements."""
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
