"""Portable CPU targets: ISA levels from CPU features, readable database keys, thread counts."""

import re
from dataclasses import replace

import numpy as np
import pytest
import tvm
from tvm import s_tir, te

from harness.compile.target import (
    X86_64_V3,
    X86_64_V4,
    build_target,
    native_x86,
    portable_x86,
    target_key,
    target_spec,
)
from harness.device import load_device, physical_cores
from harness.errors import HarnessError

# Feature sets as Linux reports them (abridged to what decides the level).
ZEN3 = X86_64_V3 | {"sse4_2", "sha_ni", "vaes"}  # AMD EPYC Milan: AVX2, no AVX-512
SKYLAKE_SP = X86_64_V3 | X86_64_V4  # AVX-512 without VNNI
SAPPHIRE_RAPIDS = SKYLAKE_SP | {"avx512_vnni", "amx_tile", "avx512_bf16"}
ZEN4 = SKYLAKE_SP | {"avx512_vnni", "avx512_bf16"}
SANDY_BRIDGE = {"avx", "sse4_2", "xsave"}


@pytest.mark.parametrize(("flags", "expected"), [
    (ZEN3, {"mcpu": "x86-64-v3"}),
    (SKYLAKE_SP, {"mcpu": "x86-64-v4"}),
    (SAPPHIRE_RAPIDS, {"mcpu": "x86-64-v4", "mattr": ["+avx512vnni"]}),
    (ZEN4, {"mcpu": "x86-64-v4", "mattr": ["+avx512vnni"]}),
], ids=["zen3", "skylake-sp", "sapphire-rapids", "zen4"])
def test_isa_level_from_cpu_features(flags: set[str], expected: dict) -> None:
    assert portable_x86(flags) == expected


def test_below_x86_64_v3_is_a_clear_error() -> None:
    with pytest.raises(HarnessError, match=r"below x86-64-v3 \(lacks .*avx2.*\).*x86-native"):
        portable_x86(SANDY_BRIDGE)
    with pytest.raises(HarnessError, match=r"cannot read this host's x86 CPU flags.*x86-native"):
        portable_x86(set())


def test_intel_and_amd_cpus_of_a_level_share_a_key_and_threads_do_not() -> None:
    x86 = load_device("x86")
    assert target_key(target_spec(x86, SAPPHIRE_RAPIDS)) == target_key(target_spec(x86, ZEN4)) == \
        "x86-64-v4-vnni-t2"
    assert target_key(target_spec(x86, ZEN3)) == "x86-64-v3-t2"
    assert target_key(target_spec(replace(x86, threads=4), ZEN3)) == "x86-64-v3-t4"


def test_portable_target_builds_with_the_level_and_its_features() -> None:
    target = build_target(load_device("x86"))
    assert str(target.attrs["mcpu"]) in ("x86-64-v3", "x86-64-v4")
    assert int(target.attrs["num-cores"]) == 2


def test_native_profile_keeps_the_cpu_model() -> None:
    spec = target_spec(load_device("x86-native"))
    assert spec["mcpu"] not in ("native", "x86-64-v3", "x86-64-v4")
    assert re.fullmatch(rf"{spec['mcpu']}(-mattr-[0-9a-f]{{8}})?-t2", target_key(spec))


def test_native_features_are_the_hosts_where_its_model_name_says_otherwise() -> None:
    """A VM may hide AVX-512 from a CPU model that has it; a hypervisor may report an older model."""
    hidden = native_x86("sapphirerapids", ZEN3)
    assert hidden["mcpu"] == "sapphirerapids"
    assert {"-avx512f", "-avx512vnni", "-amx-int8", "-avxvnni"} <= set(hidden["mattr"])
    assert not {"-avx", "-avx2", "-fma", "-f16c"} & set(hidden["mattr"])
    ice_lake = {"avx512ifma", "avx512vbmi", "avx512_vbmi2", "avx512_bitalg", "avx512_vpopcntdq"}
    assert native_x86("rocketlake", SAPPHIRE_RAPIDS | ice_lake | {"amx_int8"}) == \
        {"mcpu": "rocketlake", "mattr": ["+amx-int8", "+amx-tile", "+avx512bf16"]}
    assert native_x86("znver4", ZEN4 | ice_lake) == {"mcpu": "znver4"}
    key = target_key({"kind": "llvm", **hidden, "num-cores": 2})
    assert re.fullmatch(r"sapphirerapids-mattr-[0-9a-f]{8}-t2", key)


def _vector_kernel(target: tvm.target.Target) -> tvm.runtime.Executable:
    """A 16-lane float32 kernel, b = a² + 1, built for `target`."""
    a = te.placeholder((256,), "float32", name="a")
    sch = s_tir.Schedule(te.create_prim_func([a, te.compute((256,), lambda i: a[i] * a[i] + 1.0, name="b")]))
    (loop,) = sch.get_loops(sch.get_sblock("b"))
    sch.vectorize(sch.split(loop, [None, 16])[1])
    return tvm.compile(sch.mod, target=target)


@pytest.mark.parametrize("cpu", ["sapphirerapids", "host"])
def test_native_code_for_a_cpu_that_hides_avx512_runs_without_it(cpu: str) -> None:
    """A CPU model with AVX-512 (or this host's) reporting only AVX2's flags: no AVX-512 register in the code,
    which runs on every x86-64-v3 host; the model's own features alone would use them."""
    native = load_device("x86-native")
    spec = target_spec(native, X86_64_V3) if cpu == "host" else {"kind": "llvm", **native_x86(cpu, X86_64_V3)}
    built = _vector_kernel(build_target(replace(native, target=spec)))
    assert "zmm" not in built.mod.inspect_source("asm")
    x, y = (tvm.runtime.tensor(np.arange(256, dtype="float32")), tvm.runtime.tensor(np.zeros(256, "float32")))
    built(x, y)
    np.testing.assert_allclose(y.numpy(), np.arange(256) ** 2 + 1.0)
    if cpu != "host":
        model_only = _vector_kernel(tvm.target.Target({"kind": "llvm", "mcpu": cpu}))
        assert "zmm" in model_only.mod.inspect_source("asm")


def test_auto_threads_are_the_physical_cores(tmp_path) -> None:
    path = tmp_path / "auto.yaml"
    path.write_text("name: auto\ntarget: {kind: llvm, mcpu: portable}\nthreads: auto\n")
    profile = load_device(str(path))
    assert profile.thread_count == physical_cores()
    assert target_spec(profile, ZEN3)["num-cores"] == physical_cores()
    path.write_text("name: auto\ntarget: {kind: llvm, mcpu: portable}\nthreads: many\n")
    with pytest.raises(HarnessError, match="threads"):
        load_device(str(path))


def test_board_and_gpu_keys_name_what_shapes_their_schedules() -> None:
    assert target_key(target_spec(load_device("rpi4"))) == "aarch64-cortex-a72-neon-t4"
    assert target_key(target_spec(load_device("rpi5"))) == "aarch64-cortex-a76-neon-dotprod-t4"
    assert target_key(target_spec(load_device("cuda"))) == "cuda-sm_90"
    odd = target_key({"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 2, "opt-level": 2})
    assert odd.startswith("x86-64-v3-t2-") and odd != "x86-64-v3-t2"
