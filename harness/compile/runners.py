"""MetaSchedule runners: where, and on how many threads, tuning candidates are timed (on this host or on a
board over TVM RPC); how each is timed is `harness.candidate_timing`."""

from __future__ import annotations

import functools
import os

import tvm
from tvm.s_tir import meta_schedule as ms

from harness import candidate_timing
from harness.device import DeviceProfile, parse_hostport
from harness.errors import HarnessError


def local_runner(threads: int) -> ms.runner.LocalRunner:
    """Candidates timed in a worker process on `threads` threads: its `TVM_NUM_THREADS` (TVM 0.27's default is
    half the logical CPUs on x86: 1 on a 2-vCPU host), set by `os.putenv` itself as the worker's initializer (a
    function of the harness would make each worker import the harness)."""
    return _worker_runner("TVM_NUM_THREADS", str(threads))


def gpu_runner(gpu: int) -> ms.runner.LocalRunner:
    """Candidates timed on this host's CUDA GPU `gpu` (MetaSchedule's workers use device 0: the worker sees only
    that GPU, through `CUDA_VISIBLE_DEVICES`)."""
    return _worker_runner("CUDA_VISIBLE_DEVICES", visible_gpu(gpu))


def _worker_runner(variable: str, value: str) -> ms.runner.LocalRunner:
    """MetaSchedule's local runner, timing each candidate by `candidate_timing`, its worker started with the
    environment variable `variable` set to `value`."""
    return ms.runner.LocalRunner(evaluator_config=candidate_timing.CONFIG,
                                 f_run_evaluator=candidate_timing.fastest_of_repeats,
                                 initializer=functools.partial(os.putenv, variable, value))


def visible_gpu(gpu: int) -> str:
    """The `CUDA_VISIBLE_DEVICES` entry of this process's GPU `gpu` (its index, or the `gpu`-th entry of the list
    this process was given: an index, a UUID or a MIG name)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[gpu].strip() if visible else str(gpu)


def target_threads(target: tvm.target.Target) -> int:
    """The threads a CPU target's kernels are built for (its `num-cores`), else this machine's CPUs."""
    return int(target.attrs.get("num-cores") or 0) or os.cpu_count() or 1


def check_runner(profile: DeviceProfile) -> None:
    """A one-line error, before anything is exported or built, where the profile's candidates could not be timed:
    its GPU is not on this host, or its tracker is unreachable or serves no board of its key (TVM's RPC runner
    would retry each candidate for a minute)."""
    if (gpu := profile.gpu_index) is not None:
        from harness.measure import cuda_device

        try:
            cuda_device(gpu)
        except HarnessError as exc:
            raise HarnessError(f"device {profile.name}: tuning times candidates on the GPU, and {exc}") from None
    elif profile.is_remote:
        if profile.remote.tracker is None:
            raise HarnessError(f"device {profile.name}: tuning over RPC needs a tracker (--tracker HOST:PORT)")
        from harness.remote import check_tracker

        check_tracker(profile)


def runner_for(profile: DeviceProfile) -> ms.runner.Runner:
    """Measure candidates locally or on the profile's board over TVM RPC (through its tracker), on the
    threads its kernels are built for (`DeviceProfile.kernel_threads`); each candidate's time is the fastest of
    `candidate_timing.REPEAT` timings. Checked first (`check_runner`)."""
    check_runner(profile)
    if (gpu := profile.gpu_index) is not None:
        return gpu_runner(gpu)
    if not profile.is_remote:
        return local_runner(profile.kernel_threads)
    remote = profile.remote
    host, port = parse_hostport(remote.tracker, f"device {profile.name} tracker")
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=remote.key,
                                 session_timeout_sec=int(remote.timeout_s))
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=candidate_timing.CONFIG,
                               f_run_evaluator=functools.partial(candidate_timing.fastest_of_repeats_rpc,
                                                                 threads=profile.thread_count))
