"""Compile stage: ONNX + DeviceProfile → TVM shared library (Relax VM executable).

Every TVM import of the build side lives in this package (TVM's API moves between releases).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx
import tvm
from tvm.relax.frontend.onnx import from_onnx

from harness.compile.integer import integerize, qparams_as_buffers
from harness.compile.layout import clip_as_relax_ops, convert_layout
from harness.compile.target import build_target, target_json
from harness.device import ConvLayout, DeviceProfile
from harness.errors import HarnessError
from harness.export import OnnxModel

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class Artifact:
    """A compiled model: the shared library and what it was built for."""

    path: Path
    input_name: str
    input_shape: tuple[int, ...]
    input_dtype: str
    device: str
    target: str  # JSON
    cross_compiled: bool
    compile_seconds: float
    details: dict[str, Any] = field(default_factory=dict)  # compiler reports, e.g. fp16 or integer op counts

    @property
    def bytes(self) -> int:
        return self.path.stat().st_size

    def save_meta(self) -> None:
        meta = asdict(self) | {"path": self.path.name}
        self.path.with_suffix(".json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load_meta(cls, lib_path: Path) -> Artifact | None:
        """The artifact saved at `lib_path`, or None when it (or its metadata) is missing."""
        meta_path = lib_path.with_suffix(".json")
        if not (lib_path.is_file() and meta_path.is_file()):
            return None
        meta = json.loads(meta_path.read_text())
        meta["path"], meta["input_shape"] = lib_path, tuple(meta["input_shape"])
        return cls(**meta)


def import_onnx(model: OnnxModel) -> tvm.IRModule:
    """Import an ONNX file into Relax with the batch and resolution fixed to `model.input_shape`."""
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(model.path))
    except (OSError, DecodeError) as exc:
        raise HarnessError(f"cannot read ONNX model {model.path}: {exc}") from None
    return from_onnx(proto, {model.input_name: list(model.input_shape)}, keep_params_in_input=False)


def _export(executable: tvm.runtime.Executable, path: Path, profile: DeviceProfile) -> None:
    from tvm.support import cc

    tmp = path.with_suffix(".tmp.so")
    if profile.cross_compiler:
        import shutil

        if shutil.which(profile.cross_compiler) is None:
            raise HarnessError(
                f"device {profile.name}: cross compiler {profile.cross_compiler!r} not found "
                "(on Debian/Ubuntu: apt-get install gcc-aarch64-linux-gnu)"
            )
        executable.export_library(str(tmp), fcompile=cc.cross_compiler(profile.cross_compiler))
    else:
        executable.export_library(str(tmp))
    tmp.replace(path)


def prepare_module(model: OnnxModel, *, layout: ConvLayout = ConvLayout.NCHW, fp16: bool = False,
                   integer: bool = False, details: dict[str, Any] | None = None) -> tvm.IRModule:
    """The Relax module that is compiled (and tuned): the imported ONNX graph, weights bound as constants.

    `layout`: of the float convolutions (harness.compile.layout); integer ones stay NCHW, since Relax cannot
    convert the layout of the quantize ops around them.
    `fp16`: convolutions and matrix products computed in float16 (Relax ToMixedPrecision).
    `integer`: a QDQ model's quantized convolutions become integer ones (harness.compile.integer).
    What was done is added to `details`.
    """
    mod = import_onnx(model)
    details = details if details is not None else {}
    layout = ConvLayout.NCHW if integer else layout
    mod = convert_layout(mod, layout)
    details["layout"] = str(layout)
    if fp16:
        mod = tvm.relax.transform.ToMixedPrecision(out_dtype="float16")(clip_as_relax_ops(mod))
        details["fp16"] = True
    if integer:
        mod, report = integerize(mod)
        total = report.integer_ops + report.float_ops
        details["integer_ops"] = f"{report.integer_ops}/{total}"
        log.info("integer int8: %d of %d convolutions and dense layers integer", report.integer_ops, total)
    return qparams_as_buffers(mod)


def _build(mod: tvm.IRModule, target: tvm.target.Target, database: Path | None, model: OnnxModel,
           profile: DeviceProfile) -> tuple[tvm.runtime.Executable, Any]:
    """Build `mod`, with the tuning database's schedules where it has them; returns (executable, coverage)."""
    from harness.compile import tuning

    tasks = tuning.extract_tasks([mod], target)
    if database is not None and tuning.database_fingerprint(database) is not None:
        db = tuning.records_for(database, [t.dispatched[0] for t in tasks])
        covered = tuning.tasks_coverage(tasks, target, db)
        log.info("building %s for %s with tuned schedules for %s kernels", model.path.name, profile.name, covered)
        return tuning.compile_with_database(mod, target, db), covered
    log.info("building %s for %s (no tuning database)", model.path.name, profile.name)
    return tvm.compile(mod, target), tuning.TuningCoverage(tuned=0, total=len(tasks))


def compile_onnx(model: OnnxModel, profile: DeviceProfile, out_path: Path, *, fp16: bool = False,
                 integer: bool = False, database: Path | None = None) -> Artifact:
    """Import, build for the profile's target and export a shared library to `out_path`.

    `database`: a MetaSchedule tuning database (see harness.compile.tuning); kernels it has schedules
    for are built with them, the rest untuned. The artifact's details say how many were tuned.
    """
    from harness.compile import tuning

    target = build_target(profile)
    start = time.perf_counter()
    details: dict[str, Any] = {}
    try:
        mod = prepare_module(model, layout=profile.layout, fp16=fp16, integer=integer, details=details)
        executable, covered = _build(mod, target, database, model, profile)
    except Exception as exc:  # TVM's errors are of many types; the float path is the fallback for integer ops
        if not integer:
            raise
        reason = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
        log.warning("%s: integer int8 does not build for %s (%s); using the float QDQ path", model.path.name,
                    profile.name, reason)
        details = {"integer_fallback": reason}
        mod = prepare_module(model, layout=profile.layout, fp16=fp16, details=details)
        executable, covered = _build(mod, target, database, model, profile)
    details["tuned_kernels"] = str(covered)
    if tuning.gpu_default_schedules(target) and covered.tuned < covered.total:
        details["schedules"] = "dlight"  # the rest run DLight's default GPU schedules
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _export(executable, out_path, profile)
    artifact = Artifact(
        path=out_path,
        input_name=model.input_name,
        input_shape=model.input_shape,
        input_dtype="float32",
        device=profile.name,
        target=target_json(target),
        cross_compiled=bool(profile.cross_compiler),
        compile_seconds=time.perf_counter() - start,
        details=details,
    )
    artifact.save_meta()
    return artifact
