"""How MetaSchedule's runners time a tuning candidate; imported by the runners' worker processes, so it
imports only TVM (a module of `harness.compile` would make each worker import the compile side and ONNX)."""

from __future__ import annotations

from tvm.rpc import RPCSession
from tvm.runtime import Device, Module
from tvm.s_tir.meta_schedule.runner import EvaluatorConfig
from tvm.s_tir.meta_schedule.runner.utils import T_ARGUMENT_LIST, run_evaluator_common

REPEAT = 3  # timings of a candidate, each of `number` runs and at least `min_repeat_ms`
CONFIG = EvaluatorConfig(number=3, repeat=REPEAT, min_repeat_ms=20)


def fastest_of_repeats(rt_mod: Module, device: Device, evaluator_config: EvaluatorConfig,
                       repeated_args: list[T_ARGUMENT_LIST]) -> list[float]:
    """The fastest of the evaluator's timings, as the candidate's only time.

    MetaSchedule ranks candidates, trains its cost model and stores records by the mean of what the runner
    returns. On a 2-vCPU host the same kernel's 2-thread timings vary by 1.5x (median; up to 3.7x) from one
    timing to the next, mostly upwards; a slow one would hide a good candidate from the search.
    """
    return [min(run_evaluator_common(rt_mod, device, evaluator_config, repeated_args))]


def fastest_of_repeats_rpc(session: RPCSession, rt_mod: Module, device: Device, evaluator_config: EvaluatorConfig,
                           repeated_args: list[T_ARGUMENT_LIST], *, threads: int | None = None) -> list[float]:
    """`fastest_of_repeats` for MetaSchedule's RPC runner (its evaluators also get the session), on `threads`
    threads of the board (None: the board's default, all its big cores)."""
    if threads is not None:
        session.get_function("runtime.config_threadpool")(1, threads)  # 1: big cores first
    return fastest_of_repeats(rt_mod, device, evaluator_config, repeated_args)
