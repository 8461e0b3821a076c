"""TVM targets from device profiles, and the portable key their tuning databases are filed under.

A CPU profile names its `mcpu` in one of three ways:
* `portable` (x86): the host's x86-64 ISA level — `x86-64-v3` (AVX2, FMA), `x86-64-v4` (AVX-512), or
  `x86-64-v4` with AVX-512 VNNI — so a database tuned on one CPU of a level serves every CPU of that
  level, Intel or AMD;
* `native`: the host's own CPU model as LLVM names it, with the vector extensions the host reports where they
  differ from that model's (the last few per cent, on this machine only);
* an explicit LLVM CPU name (`cortex-a72`), for boards.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Collection
from typing import Any

import tvm

from harness.device import DeviceProfile
from harness.errors import HarnessError, last_line

# The per-block limits MetaSchedule's GPU rules and checks need (TVM's plain `cuda` target leaves them unset): those
# of every NVIDIA GPU since Maxwell (sm_50), as TVM's `nvidia/*` tags give them; 48 KB is the shared memory a block
# gets without opting in to more.
CUDA_LIMITS = {"max_threads_per_block": 1024, "max_shared_memory_per_block": 49152, "thread_warp_size": 32}
PORTABLE = "portable"
NATIVE = "native"

# x86-64 micro-architecture levels (the psABI's), as Linux /proc/cpuinfo names their features.
X86_64_V3 = frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"})
X86_64_V4 = frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"})
VNNI = "avx512_vnni"
# The vector extensions that decide which instructions LLVM may emit: Linux /proc/cpuinfo name → LLVM's.
VECTOR_FEATURES = {
    "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512f", "avx512bw": "avx512bw",
    "avx512cd": "avx512cd", "avx512dq": "avx512dq", "avx512vl": "avx512vl", VNNI: "avx512vnni",
    "avx512_bf16": "avx512bf16", "avx512_fp16": "avx512fp16", "avx512ifma": "avx512ifma",
    "avx512vbmi": "avx512vbmi", "avx512_vbmi2": "avx512vbmi2", "avx512_bitalg": "avx512bitalg",
    "avx512_vpopcntdq": "avx512vpopcntdq", "avx_vnni": "avxvnni", "amx_tile": "amx-tile", "amx_int8": "amx-int8",
    "amx_bf16": "amx-bf16",
}


def host_cpu_flags() -> frozenset[str]:
    """This host's CPU feature flags as Linux /proc/cpuinfo names them (empty where it has none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def portable_x86(flags: Collection[str]) -> dict[str, Any]:
    """The `mcpu`/`mattr` of the highest x86-64 level that CPU feature `flags` reach (v3 at least)."""
    have = set(flags)
    if not have:
        raise HarnessError("cannot read this host's x86 CPU flags (/proc/cpuinfo), which the portable x86 profile "
                           "needs: use a profile with an explicit `mcpu`, e.g. --device x86-native")
    if not X86_64_V3 <= have:
        missing = ", ".join(sorted(X86_64_V3 - have))
        raise HarnessError(f"this CPU is below x86-64-v3 (lacks {missing}); the portable x86 profile needs AVX2 "
                           "and FMA: use a profile with `mcpu: native`, e.g. --device x86-native")
    if not X86_64_V4 <= have:
        return {"mcpu": "x86-64-v3"}
    if VNNI in have:
        return {"mcpu": "x86-64-v4", "mattr": ["+avx512vnni"]}
    return {"mcpu": "x86-64-v4"}


def native_x86(cpu: str, flags: Collection[str]) -> dict[str, Any]:
    """`cpu` (LLVM's name for this host's model), with `mattr` turning off the vector extensions that model has
    and the host does not report (a VM may hide AVX-512 or AMX; code using them would die on an illegal
    instruction) and on those the host has beyond it (a hypervisor may report an older model), as clang's
    `-march=native` does."""
    named = _cpu_features(cpu)
    have = {VECTOR_FEATURES[flag] for flag in flags if flag in VECTOR_FEATURES}
    off = sorted(named & set(VECTOR_FEATURES.values()) - have)
    on = sorted(have - named)
    mattr = [f"-{name}" for name in off] + [f"+{name}" for name in on]
    return {"mcpu": cpu, "mattr": mattr} if mattr else {"mcpu": cpu}


def resolve_target_dict(spec: dict[str, Any], flags: Collection[str] | None = None) -> dict[str, Any]:
    """Replace `mcpu: portable` with the host's ISA level and `mcpu: native` with its CPU name (on x86, with
    the vector extensions it reports), keeping the profile's own `mattr` after theirs."""
    resolved = dict(spec)
    if resolved.get("mcpu") == PORTABLE:
        extra = portable_x86(host_cpu_flags() if flags is None else flags)
    elif resolved.get("mcpu") == NATIVE:
        cpu, flags = tvm.target.codegen.llvm_get_system_cpu(), host_cpu_flags() if flags is None else flags
        x86 = tvm.target.codegen.llvm_get_system_triple().startswith("x86_64") and flags
        extra = native_x86(cpu, flags) if x86 else {"mcpu": cpu}
    else:
        return resolved
    attrs = [*extra.get("mattr", []), *(resolved.get("mattr") or [])]
    resolved.update(extra)
    if attrs:
        resolved["mattr"] = attrs
    return resolved


def target_spec(profile: DeviceProfile, flags: Collection[str] | None = None) -> dict[str, Any]:
    """The resolved target dict of `profile`: CPU targets get `num-cores` = `profile.kernel_threads`, CUDA targets
    the `CUDA_LIMITS` they do not set."""
    spec = resolve_target_dict(profile.target, flags)
    if spec.get("kind") == "llvm":
        spec["num-cores"] = profile.kernel_threads
    if spec.get("kind") == "cuda":
        spec = CUDA_LIMITS | spec
    if profile.host_target is not None:
        spec["host"] = resolve_target_dict(profile.host_target, flags)
    return spec


@functools.cache
def _cpu_features(cpu: str, triple: str | None = None) -> frozenset[str]:
    """The features LLVM enables for CPU model `cpu` (of `triple`; default: this host's)."""
    spec = {"kind": "llvm", "mcpu": cpu} | ({"mtriple": triple} if triple else {})
    return frozenset(str(name) for name in tvm.target.codegen.llvm_get_cpu_features(tvm.target.Target(spec)))


@functools.cache
def _llvm_features(triple: str) -> frozenset[str]:
    """Every feature LLVM enables on some CPU of `triple` (LLVM has no list of all features)."""
    cpus = tvm.target.codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm", "mtriple": triple}))
    return frozenset(name for cpu in cpus for name in _cpu_features(str(cpu), triple))


def _check_llvm(profile: DeviceProfile, target: tvm.target.Target) -> None:
    """LLVM ignores (with a warning) a CPU or feature it does not know, and a library for another
    architecture cannot run here: both are errors, before anything is built."""
    triple = str(target.attrs.get("mtriple", "")) or tvm.target.codegen.llvm_get_system_triple()
    mcpu = str(target.attrs.get("mcpu", ""))
    if mcpu and not tvm.target.codegen.llvm_is_valid_cpu(mcpu, triple):
        raise HarnessError(f"device {profile.name}: LLVM knows no CPU {mcpu!r} for {triple!r} "
                           "(`python -m harness devices` shows working targets)")
    for attr in target.attrs.get("mattr", []):
        name = str(attr).lstrip("+-")
        if name not in _llvm_features(triple):
            raise HarnessError(f"device {profile.name}: LLVM knows no feature {name!r} for {triple!r} (mattr)")
    host_arch = tvm.target.codegen.llvm_get_system_triple().split("-")[0]
    if not profile.is_remote and triple.split("-")[0] != host_arch:
        raise HarnessError(f"device {profile.name}: its target is {triple!r}, which cannot run on this {host_arch} "
                           "host; a board needs a `remote:` section (and a `cross_compiler`)")


def build_target(profile: DeviceProfile) -> tvm.target.Target:
    """The TVM target of `profile` (with its host target for GPUs), checked: unknown LLVM CPUs and features,
    and a foreign architecture on a local profile, are one-line errors."""
    spec = target_spec(profile)
    try:
        target = tvm.target.Target(spec)
    except Exception as exc:  # TVM raises its own error types for bad target dicts
        raise HarnessError(f"device {profile.name}: invalid TVM target {spec}: {last_line(exc)}") from None
    if target.kind.name == "llvm":
        _check_llvm(profile, target)
    return target


def target_json(target: tvm.target.Target) -> str:
    """The one-line JSON form of a target (TVM prints targets as JSON), for rows and cache keys."""
    return json.dumps(json.loads(str(target)), sort_keys=True)


_KNOWN = {"kind", "mcpu", "mattr", "mtriple", "num-cores", "arch", "host", "keys", "tag"}


def target_key(spec: dict[str, Any]) -> str:
    """A readable folder name for a resolved target dict, e.g. `x86-64-v4-vnni-t2` or `aarch64-cortex-a72-t4`.

    It names what shapes tuned schedules: the CPU (level or model), the instruction extensions asked for
    (up to three added ones by name, more, or any turned off, by a hash),
    the foreign architecture and the thread count (MetaSchedule's parallel extents); for GPUs the arch.
    Target attributes beyond those add a short hash, so two different targets never share a key.
    """
    parts: list[str] = []
    if spec.get("mtriple"):
        parts.append(str(spec["mtriple"]).split("-")[0])
    parts.append(str(spec.get("mcpu") or spec.get("tag") or spec.get("kind", "target")).replace("/", "-"))
    if spec.get("kind") not in (None, "llvm") and spec.get("arch"):
        parts.append(str(spec["arch"]))
    mattr = [str(attr) for attr in spec.get("mattr", [])]
    if len(mattr) <= 3 and not any(attr.startswith("-") for attr in mattr):
        for name in (attr.lstrip("+") for attr in mattr):
            parts.append(name.removeprefix("avx512") if name.startswith("avx512") and len(name) > 6 else name)
    elif mattr:  # e.g. a masked CPU's native features: named by a hash, not a dozen parts
        parts.append(f"mattr-{_short_hash(mattr)}")
    if "num-cores" in spec:
        parts.append(f"t{spec['num-cores']}")
    implied = CUDA_LIMITS if spec.get("kind") == "cuda" else {}
    rest = {k: v for k, v in spec.items() if k not in _KNOWN and not (k in implied and implied[k] == v)}
    if rest:
        parts.append(_short_hash(rest))
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts))


def _short_hash(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]
