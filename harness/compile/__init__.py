"""Compile stage: ONNX + DeviceProfile → TVM shared library (Relax VM executable).

Every TVM import of the build side lives in this package (TVM's API moves between releases).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import onnx
import tvm
from tvm.relax.frontend.onnx import from_onnx

from harness import cache
from harness.compile import database as tuning_db
from harness.compile import kernels
from harness.compile.fold import fold_layout_constants
from harness.compile.integer import integerize, qdq_as_elementwise
from harness.compile.intrinsics import DotProduct, dot_product
from harness.compile.layout import clip_as_relax_ops, convert_layout, transposes_apart
from harness.compile.packing import dot_product_layout
from harness.compile.provenance import timed_on, timing_machine
from harness.compile.target import build_target, target_json
from harness.compile.tvm_intrinsics import load_tensor_intrinsics
from harness.device import ConvLayout, DeviceProfile
from harness.errors import HarnessError, last_line
from harness.export import OnnxModel
from harness.specs import CompileOptions, TuningCoverage, fully_tuned

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class CompileReport:
    """What the compiler did to a model, recorded in its results row."""

    layout: str  # of the convolutions
    tuned_kernels: TuningCoverage
    tuned_here: str | None = None  # "k/n": k of the n tuned kernels take a schedule timed on the machine they run on
    fp16: bool | None = None  # True: computed in float16
    integer_ops: str | None = None  # "k/n" convolutions and dense layers integer
    dot_product_ops: str | None = None  # "k/n" of the integer ones packed for 8-bit dot-product instructions
    integer_fallback: str | None = None  # why integer int8 did not build (the float QDQ path was used)
    schedules: str | None = None  # "dlight": untuned GPU kernels run DLight's default schedules

    def fully_tuned(self) -> bool:
        """Every kernel runs a real schedule (`specs.fully_tuned`)."""
        return fully_tuned(self.tuned_kernels, self.schedules)

    def row_fields(self) -> dict[str, Any]:
        """The report as results-row fields (harness.results.Row has one of each name)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
    report: CompileReport
    sha256: str  # of the library: checked before it is loaded from the cache

    @property
    def bytes(self) -> int:
        return self.path.stat().st_size

    def save_meta(self) -> None:
        meta = asdict(self) | {"path": self.path.name}
        cache.write(self.path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))

    @classmethod
    def load_meta(cls, lib_path: Path) -> Artifact | None:
        """The artifact cached at `lib_path`, or None when it is missing or damaged (then it is removed: a
        truncated or garbled library would crash the process that loads it)."""
        meta_path = lib_path.with_suffix(".json")
        if not (lib_path.is_file() or meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            report = meta.pop("report")
            report["tuned_kernels"] = TuningCoverage(**report["tuned_kernels"])
            artifact = cls(**meta | {"path": lib_path, "input_shape": tuple(meta["input_shape"]),
                                     "report": CompileReport(**report)})
            intact = artifact.sha256 == cache.file_digest(lib_path)
        except (OSError, ValueError, KeyError, TypeError):  # missing, unreadable, or from another version
            intact = False
        if not intact:
            cache.discard(lib_path, "its library does not match its metadata")
            meta_path.unlink(missing_ok=True)
            return None
        return artifact


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

    tmp = cache.tmp_path(path, ".so")
    profile.check_tools()
    try:
        if profile.cross_compiler:
            executable.export_library(str(tmp), fcompile=cc.cross_compiler(profile.cross_compiler))
        else:
            executable.export_library(str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def prepare_module(model: OnnxModel, *, layout: ConvLayout = ConvLayout.NCHW,
                   options: CompileOptions | None = None, notes: dict[str, Any] | None = None,
                   dot: DotProduct | None = None) -> tvm.IRModule:
    """The Relax module that is compiled (and tuned): the imported ONNX graph, weights bound as constants.

    `layout`: of the convolutions, float and integer (harness.compile.layout); quantize and dequantize ops
    are written as elementwise ops first (harness.compile.integer.qdq_as_elementwise), which follow it.
    `options.fp16`: convolutions and matrix products computed in float16 (Relax ToMixedPrecision).
    `options.integer`: a QDQ model's quantized convolutions become integer ones (harness.compile.integer).
    Transposed, reshaped and cast constants are folded (harness.compile.fold); 8-bit transposes get kernels of
    their own (harness.compile.layout.transposes_apart); then, given the target's
    8-bit dot-product instruction `dot` (harness.compile.intrinsics.dot_product), integer NHWC convolutions
    get its weight layout (harness.compile.packing.dot_product_layout): every one where it is exact, else
    those whose weights cannot saturate it.
    What was done is added to `notes` (CompileReport fields).
    """
    options = options or CompileOptions()
    mod = import_onnx(model)
    notes = notes if notes is not None else {}
    if options.integer:  # matched on the imported graph, whose layout the patterns assume
        mod, report = integerize(mod)
        total = report.integer_ops + report.float_ops
        notes["integer_ops"] = f"{report.integer_ops}/{total}"
        log.info("integer int8: %d of %d convolutions and dense layers integer", report.integer_ops, total)
    mod = convert_layout(qdq_as_elementwise(mod), layout)
    notes["layout"] = str(layout)
    if options.fp16:
        mod = tvm.relax.transform.ToMixedPrecision(out_dtype="float16")(clip_as_relax_ops(mod))
        notes["fp16"] = True
    mod = fold_layout_constants(mod)
    if options.integer and layout is ConvLayout.NHWC:
        mod = transposes_apart(mod)
    if options.integer and layout is ConvLayout.NHWC and dot is not None:
        mod, converted = dot_product_layout(mod, exact=dot.exact, signed=dot.signed)
        notes["dot_product_ops"] = f"{converted}/{report.integer_ops}"
        unpacked = "" if dot.exact else " and weights that could saturate int16 pair sums"
        log.info("integer int8: %s of the integer convolutions and dense layers packed for 8-bit dot products "
                 "(depthwise ones, dense layers%s are not)", notes["dot_product_ops"], unpacked)
    return mod


def _build(mod: tvm.IRModule, target: tvm.target.Target, database: Path | None, model: OnnxModel,
           profile: DeviceProfile) -> tuple[tvm.runtime.Executable, TuningCoverage, str | None]:
    """Build `mod`, with the tuning database's schedules where it has them; returns (executable, coverage, "k/n":
    how many of the tuned kernels take a schedule timed on the machine the build is for, None without a database)."""
    tasks = kernels.extract_tasks([mod], target)
    if database is not None and tuning_db.database_fingerprint(database) is not None:
        machine = timing_machine(profile)
        db = tuning_db.records_for(database, [t.dispatched[0] for t in tasks], machine)
        chosen = [r for r in (kernels.chosen_record(db, t, target) for t in tasks) if r is not None]
        covered = TuningCoverage(tuned=len(chosen), total=len(tasks))
        here = f"{sum(timed_on(r) == machine for r in chosen)}/{len(chosen)}"
        log.info("building %s for %s with tuned schedules for %s kernels (%s timed on %s)", model.path.name,
                 profile.name, covered, here, machine)
        return kernels.compile_with_database(mod, target, db), covered, here
    log.info("building %s for %s (no tuning database)", model.path.name, profile.name)
    return tvm.compile(mod, target), TuningCoverage(tuned=0, total=len(tasks)), None


def compile_onnx(model: OnnxModel, profile: DeviceProfile, out_path: Path, *,
                 options: CompileOptions | None = None, database: Path | None = None) -> Artifact:
    """Import, build for the profile's target and export a shared library to `out_path`.

    `database`: a MetaSchedule tuning database (see harness.compile.database); kernels it has schedules
    for are built with them, the rest untuned. The artifact's report says how many were tuned.
    """
    options = options or CompileOptions()
    target = build_target(profile)
    start = time.perf_counter()
    if target.kind.name != "llvm":  # DLight's GPU matmul rule would import every target's (fp16: minutes)
        load_tensor_intrinsics(target)
    notes: dict[str, Any] = {}
    try:
        mod = prepare_module(model, layout=profile.layout, options=options, notes=notes,
                             dot=dot_product(target))
        executable, covered, tuned_here = _build(mod, target, database, model, profile)
    except Exception as exc:  # TVM's errors are of many types; the float path is the fallback for integer ops
        if not options.integer:
            raise
        reason = last_line(exc)[:200]
        log.warning("%s: integer int8 does not build for %s (%s); using the float QDQ path", model.path.name,
                    profile.name, reason)
        notes = {"integer_fallback": reason}
        mod = prepare_module(model, layout=profile.layout, options=replace(options, integer=False), notes=notes)
        executable, covered, tuned_here = _build(mod, target, database, model, profile)
    if kernels.gpu_default_schedules(target) and not covered.complete:
        notes["schedules"] = "dlight"  # the rest run DLight's default GPU schedules
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
        report=CompileReport(tuned_kernels=covered, tuned_here=tuned_here, **notes),
        sha256=cache.file_digest(out_path),
    )
    artifact.save_meta()
    return artifact
