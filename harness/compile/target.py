"""TVM targets from device profiles (JSON dicts; "mcpu: native" becomes this host's CPU)."""

from __future__ import annotations

import json
import os
from typing import Any

import tvm

from harness.device import DeviceProfile
from harness.errors import HarnessError


def resolve_target_dict(spec: dict[str, Any]) -> dict[str, Any]:
    """Replace `mcpu: native` with the host CPU LLVM detects (its features come with the name)."""
    resolved = dict(spec)
    if resolved.get("mcpu") == "native":
        resolved["mcpu"] = tvm.target.codegen.llvm_get_system_cpu()
    return resolved


def build_target(profile: DeviceProfile) -> tvm.target.Target:
    """The TVM target of `profile` (with its host target for GPUs).

    CPU targets get `num-cores` (MetaSchedule needs it) from the profile's threads when they lack it.
    """
    spec = resolve_target_dict(profile.target)
    if spec.get("kind") == "llvm" and "num-cores" not in spec:
        spec["num-cores"] = profile.threads or os.cpu_count() or 1
    if profile.host_target is not None:
        spec["host"] = resolve_target_dict(profile.host_target)
    try:
        return tvm.target.Target(spec)
    except Exception as exc:  # TVM raises its own error types for bad target dicts
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise HarnessError(f"device {profile.name}: invalid TVM target {spec}: {first}") from None


def target_json(target: tvm.target.Target) -> str:
    """The one-line JSON form of a target (TVM prints targets as JSON), for rows and cache keys."""
    return json.dumps(json.loads(str(target)), sort_keys=True)
