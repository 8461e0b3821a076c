from pathlib import Path

import pytest

from harness.compile.target import build_target
from harness.device import DEVICES_DIR, load_device, parse_hostport, physical_cores
from harness.errors import HarnessError

SHIPPED = sorted(DEVICES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_profile_loads_and_builds_a_target(path: Path) -> None:
    profile = load_device(path.stem)
    target = build_target(profile)
    assert target.kind.name == profile.target["kind"]


def test_x86_native_cpu_is_resolved() -> None:
    target = build_target(load_device("x86-native"))
    assert target.attrs["mcpu"] not in ("", "native", "portable")


def test_rpi4_profile() -> None:
    profile = load_device("rpi4")
    target = build_target(profile)
    assert str(target.attrs["mtriple"]) == "aarch64-linux-gnu"
    assert str(target.attrs["mcpu"]) == "cortex-a72"
    assert profile.threads == 4 and profile.remote is not None and profile.remote.key == "rpi4"
    assert profile.cross_compiler == "aarch64-linux-gnu-gcc"


def test_remote_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load_device("rpi4")
    direct = profile.with_remote(direct="10.0.0.5:9090")
    assert direct.remote.direct == "10.0.0.5:9090" and direct.remote.tracker is None
    assert direct.remote.key == "rpi4"
    monkeypatch.setenv("TVM_TRACKER_HOST", "tracker.lan")
    monkeypatch.setenv("TVM_TRACKER_PORT", "9000")
    assert load_device("rpi4").remote.tracker == "tracker.lan:9000"
    assert load_device("x86").remote is None


def test_unknown_device_lists_the_available_ones() -> None:
    with pytest.raises(HarnessError, match=r"unknown device 'rpi9'; available: .*rpi4.*x86"):
        load_device("rpi9")


@pytest.mark.parametrize("bad", ["nohost", "host:", ":90", "host:port"])
def test_bad_addresses(bad: str) -> None:
    with pytest.raises(HarnessError, match="expected 'host:port'"):
        parse_hostport(bad)


def test_bad_profile_keys(tmp_path: Path) -> None:
    path = tmp_path / "board.yaml"
    path.write_text("name: board\ntarget: {kind: llvm}\nthread: 4\n")
    with pytest.raises(HarnessError, match=r"board\.yaml: unknown key 'thread'; allowed: .*threads"):
        load_device(str(path))
    path.write_text("name: board\ntarget: {mcpu: x}\n")
    with pytest.raises(HarnessError, match="target needs a 'kind'"):
        load_device(str(path))


def test_kernels_are_built_for_the_targets_num_cores_else_the_profiles_threads() -> None:
    """One rule for the target's `num-cores` and the threads tuning candidates are timed on."""
    from dataclasses import replace

    from harness.compile.target import target_spec

    x86 = load_device("x86")
    assert x86.kernel_threads == 2 and target_spec(x86)["num-cores"] == 2
    four = replace(x86, target={**x86.target, "num-cores": 4})
    assert four.kernel_threads == 4 and target_spec(four)["num-cores"] == 4
    assert replace(x86, threads="auto").kernel_threads == physical_cores()
