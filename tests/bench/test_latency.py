"""pytest-benchmark: MobileNet v1/v2 (fp32 and int8 QDQ) at 224×224 in TVM untuned, TVM tuned, ONNX
Runtime and PyTorch, on this host, in one run (`tox -e bench`; `harness bench` prints the same as ratios).

Each benchmark's extra_info has `vs_ort`, its median over ONNX Runtime's median for the same recipe.
"""

import statistics

import pytest

from harness.bench import Runners, runners
from harness.device import load_device
from harness.recipe import load_recipe

pytestmark = pytest.mark.bench

RECIPES = ["v1_fp32", "v2_fp32", "v1_int8", "v2_int8"]
# ONNX Runtime first: the others refer to it. "(float QDQ)": int8 through TVM's float dequantize→conv→quantize.
RUNTIMES = ["onnxruntime", "tvm untuned", "tvm untuned (float QDQ)", "tvm tuned", "tvm tuned (float QDQ)",
            "pytorch"]
_prepared: dict[str, Runners] = {}
_ort_median: dict[str, float] = {}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("recipe", RECIPES)
def test_latency(benchmark, recipe: str, runtime: str) -> None:
    if recipe not in _prepared:
        _prepared[recipe] = runners(load_recipe(recipe), load_device("x86"), progress=False)
    call = _prepared[recipe].calls.get(runtime)
    if call is None:
        pytest.skip(f"{runtime} does not apply to {recipe}, or x86 has no tuning database (harness tune)")
    benchmark.group = recipe
    benchmark.pedantic(call, rounds=30, warmup_rounds=3)
    median = statistics.median(benchmark.stats.stats.data)
    if runtime == "onnxruntime":
        _ort_median[recipe] = median
    benchmark.extra_info["vs_ort"] = round(median / _ort_median[recipe], 3)
    benchmark.extra_info["tuned_kernels"] = _prepared[recipe].tuned_kernels.get(runtime, "")
