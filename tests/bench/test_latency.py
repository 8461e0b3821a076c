"""pytest-benchmark: MobileNet v1/v2 (fp32 and int8 QDQ) at 224×224 in TVM untuned, TVM tuned, ONNX
Runtime and PyTorch, on this host, in one run (`tox -e bench`; `harness bench` prints the same as ratios).

Each benchmark's extra_info has `vs_ort`, its median over ONNX Runtime's median for the same recipe (timed
when the recipe is first prepared, so any subset of the cases runs on its own, e.g. `-k tvm`), and the conditions
it was measured under: host CPU, TVM target, threads, git revision, and the host's load while it ran.

Regression check between two runs (`tox -e bench` saves each run under .benchmarks/):
    tox -e bench -- --benchmark-compare --benchmark-compare-fail=median:10%
"""

import statistics
from dataclasses import replace

import pytest

from harness.bench import Runners, runners
from harness.compile.target import build_target
from harness.device import load_device
from harness.measure import latency_stats, time_callable
from harness.noise import cpu_model, watch
from harness.recipe import load_recipe
from harness.results import git_revision

pytestmark = pytest.mark.bench

RECIPES = ["v1_fp32", "v2_fp32", "v1_int8", "v2_int8"]
# "(float QDQ)": int8 through TVM's float dequantize→conv→quantize.
RUNTIMES = ["onnxruntime", "tvm untuned", "tvm untuned (float QDQ)", "tvm tuned", "tvm tuned (float QDQ)",
            "pytorch"]
ROUNDS = 30


@pytest.fixture(scope="module")
def prepared() -> dict[str, tuple[Runners, float]]:
    """Per recipe: its runners and ONNX Runtime's median (s), each made on first use."""
    cache: dict[str, tuple[Runners, float]] = {}

    def get(recipe: str) -> tuple[Runners, float]:
        if recipe not in cache:
            loaded = load_recipe(recipe)
            made = runners(loaded, load_device("x86"), progress=False)
            spec = replace(loaded.measure, repeats=ROUNDS)
            cache[recipe] = made, latency_stats(time_callable(made.calls["onnxruntime"], spec)).median_ms / 1e3
        return cache[recipe]

    return get


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("recipe", RECIPES)
def test_latency(benchmark, prepared, recipe: str, runtime: str) -> None:
    made, ort_median = prepared(recipe)
    call = made.calls.get(runtime)
    if call is None:
        pytest.skip(f"{runtime} does not apply to {recipe}, or x86 has no tuning database (harness tune)")
    benchmark.group = recipe
    with watch() as load:
        benchmark.pedantic(call, rounds=ROUNDS, warmup_rounds=3)
    profile = load_device("x86")
    benchmark.extra_info.update(
        vs_ort=round(statistics.median(benchmark.stats.stats.data) / ort_median, 3),
        tuned_kernels=str(made.reports[runtime].tuned_kernels) if runtime in made.reports else "",
        host=cpu_model(), target=str(build_target(profile)),
        threads=made.threads, git_rev=git_revision(), host_busy_cores=round(load.other_cores, 2))
