"""Portable CPU targets: ISA levels from CPU features, readable database keys, thread counts."""

from dataclasses import replace

import pytest

from harness.compile.target import X86_64_V3, X86_64_V4, build_target, portable_x86, target_key, target_spec
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
    assert target_key(spec) == f"{spec['mcpu']}-t2"


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
