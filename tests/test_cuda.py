"""`--device cuda`: CUDA artifacts build on any host; they run where an NVIDIA GPU is (tests marked `cuda`)."""

from pathlib import Path

import pandas as pd
import pytest
import tvm
from conftest import TINY_RECIPE, run_cli

from harness.compile import compile_onnx
from harness.device import load_device
from harness.export import export_onnx
from harness.models import build_model
from harness.specs import CompileOptions

HAS_GPU = tvm.cuda(0).exist
CUDA_RECIPE = TINY_RECIPE | {"train": {"epochs": 0}}


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_cuda_artifact_builds_without_a_gpu(fp16: bool, tmp_path: Path) -> None:
    model = build_model("test_mobilenet_v1", width=0.25, num_classes=10).eval()
    onnx_model = export_onnx(model, tmp_path / "m.onnx", resolution=32)
    artifact = compile_onnx(onnx_model, load_device("cuda"), tmp_path / "m.so",
                           options=CompileOptions(fp16=fp16))
    assert artifact.bytes > 0 and '"kind": "cuda"' in artifact.target
    assert artifact.report.schedules == "dlight" and bool(artifact.report.fp16) == fp16
    if not HAS_GPU:  # the library holds CUDA kernels, which only a CUDA runtime loads
        with pytest.raises(RuntimeError, match="cuda"):
            tvm.runtime.load_module(str(artifact.path))


@pytest.mark.skipif(HAS_GPU, reason="this host has a CUDA GPU: the run goes through")
def test_run_without_a_gpu_compiles_then_stops_with_one_line(write_recipe, tmp_path: Path) -> None:
    results = tmp_path / "results"
    out = run_cli("-q", "run", str(write_recipe(CUDA_RECIPE)), "--device", "cuda", "--results", str(results))
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: device cuda: no CUDA device 0 found") and "artifact is kept at" in line
    assert Path(line.rpartition("kept at ")[2]).is_file()
    assert not (results / "results.csv").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU with its driver")
def test_run_on_the_gpu_gives_a_row_per_batch(write_recipe, tmp_path: Path) -> None:
    results = tmp_path / "results"
    out = run_cli("-q", "run", str(write_recipe(CUDA_RECIPE)), "--device", "cuda", "--batch", "1,4",
                  "--results", str(results))
    assert out.returncode == 0, out.stderr
    rows = pd.read_csv(results / "results.csv")
    assert list(rows["batch"]) == [1, 4]
    assert rows["gpu_name"].notna().all() and (rows["images_per_s"] > 0).all()
    assert rows["torch_latency_ms"].notna().all() and rows["torch_fp16_latency_ms"].notna().all()
    assert (rows["max_abs_diff"] < 1e-3).all()
