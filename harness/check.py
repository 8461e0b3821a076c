"""The latency regression gate (`harness check`).

Same-run A/B: the recipes built at a base revision (in a git worktree, by that revision's own `harness build`) or
taken from a saved artifact set, timed against the working tree's builds in this process, interleaved
(`harness.abtest`). Stored baseline: figures that survive a change of machine (TVM time over ONNX Runtime's in
the same run, top-1/top-5, size, MACs), compared only between rows measured under the same conditions.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.abtest import Verdict, interleave, judge
from harness.artifacts import MANIFEST, ArtifactSet, load_set
from harness.cache import write_atomic
from harness.errors import HarnessError
from harness.noise import cpu_model
from harness.results import KINDS, Row, markdown, read_cells, write_json

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
EXIT = {Verdict.REGRESSION: 1, Verdict.INCONCLUSIVE: 3}  # else 0; usage errors are 2
BASELINE_FORMAT = 1
CONDITIONS = ("device", "target", "threads", "batch", "tvm_version", "torch_version")
METRICS = ("vs_ort", "top1", "top5", "params", "macs", "artifact_bytes")  # lower is better except top-k


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckRow:
    """One verdict of the gate: a recipe's metric, base against new."""

    recipe: str
    device: str
    metric: str
    base: float | None
    new: float | None
    ratio: float | None
    p_value: float | None
    verdict: Verdict | str  # a Verdict, or "skipped"
    reason: str


def exit_code(rows: list[CheckRow]) -> int:
    """1 when anything regressed, else 3 when anything was inconclusive or nothing got a verdict (no row, or
    every row skipped: a gate that compared nothing has not passed), else 0."""
    verdicts = {r.verdict for r in rows}
    if not verdicts - {"skipped"}:
        return EXIT[Verdict.INCONCLUSIVE]
    return next((code for verdict, code in EXIT.items() if verdict in verdicts), 0)


# --- same-run A/B ------------------------------------------------------------------------------------------------

def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except subprocess.CalledProcessError as exc:
        raise HarnessError(f"git {' '.join(args)}: {exc.stderr.strip().splitlines()[-1] if exc.stderr else exc}"
                           ) from None


def _in_worktree(arg: str, worktree: Path) -> str:
    """A recipe or device argument as the base revision sees it: a file of this checkout becomes the same file of
    the worktree (its base version); names and outside files are passed on as they are."""
    path = Path(arg).resolve()
    if not path.exists():
        return arg
    try:
        return str(worktree / path.relative_to(REPO))
    except ValueError:
        return str(path)


def resolve_revision(rev: str) -> str:
    """The commit that `rev` names in this checkout (a one-line error when it names none)."""
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        raise HarnessError(f"--base {rev}: {REPO} is not a git checkout (or git is not installed); give a saved "
                           "artifact set (--base DIR)")
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=REPO,
                           capture_output=True, text=True)
    commit = found.stdout.strip()
    if found.returncode or not commit:
        raise HarnessError(f"--base {rev}: neither a folder nor a git revision of {REPO}")
    return commit


def build_at_revision(commit: str, recipes: list[str], device: str, root: Path, quiet: bool) -> ArtifactSet:
    """The recipes compiled by `commit` of this checkout, saved under `root/<commit>/` (reused when it is
    already there): a detached git worktree runs its own `harness build`, with its own cache."""
    where = root / commit[:12]
    out = where / "set"
    if (out / MANIFEST).is_file():
        saved = load_set(out)
        if saved.device == device and set(map(_name, recipes)) <= set(saved.artifacts):
            log.info("base %s: reusing its saved builds %s", commit[:12], out)
            return saved
    with tempfile.TemporaryDirectory(prefix="harness-base-") as tmp:
        worktree = Path(tmp) / "tree"
        _git("worktree", "add", "--detach", "--force", str(worktree), commit)
        try:
            log.info("base %s: building %d recipe(s) in a worktree with that revision's harness", commit[:12],
                     len(recipes))
            cmd = [sys.executable, "-m", "harness", *(["-q"] if quiet else []), "build",
                   *(_in_worktree(r, worktree) for r in recipes), "--device", _in_worktree(device, worktree),
                   "--out", str(out), "--results", str(where / "results")]
            code, errors = _relay(cmd, worktree, quiet)
        finally:
            _git("worktree", "remove", "--force", str(worktree))
    if code != 0:
        last = (errors or ["no output"])[-1]
        if "invalid choice: 'build'" in last:
            last = "that revision has no `harness build` (it predates the gate); pick a later one or --base DIR"
        raise HarnessError(f"--base {commit[:12]}: building there failed: {last}")
    return load_set(out)


def _relay(cmd: list[str], cwd: Path, quiet: bool) -> tuple[int, list[str]]:
    """Run `cmd`, passing its progress (stderr) on unless `quiet`; its exit code and stderr lines."""
    lines = []
    with subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if not quiet:
                sys.stderr.write(f"  [base] {line}")
    return proc.returncode, [line for line in lines if line.strip()]


def _name(arg: str) -> str:
    return Path(arg).stem


def _runner(lib: Path, shape: tuple[int, ...], dtype: str, threads: int | None):  # noqa: ANN202 (a callable)
    from harness.measure import LocalExecutor  # torch and TVM: not for `check`'s usage errors

    batch = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    return LocalExecutor(lib, threads).bind(batch)


def ab_check(base: ArtifactSet, new: ArtifactSet, names: list[str] | None = None, *, rounds: int = 30,
             threshold: float = 0.05, alpha: float = 0.01, retries: int = 2, progress: bool = True) -> list[CheckRow]:
    """Time the recipes `names` (default: every recipe of `new`) of `new` against the same recipes of `base` in
    this process, interleaved; a noisy comparison is measured again up to `retries` times before it is called
    inconclusive."""
    names = list(new.artifacts) if names is None else names
    for builds in (new, base):
        missing = [n for n in names if n not in builds.artifacts]
        if missing:
            which = "new" if builds is new else "base"
            raise HarnessError(f"the {which} builds ({builds.root}) have no {', '.join(missing)} (they have: "
                               f"{', '.join(builds.artifacts) or 'nothing'})")
    rows = []
    for name in names:
        b, n = base.artifacts[name], new.artifacts[name]
        skip = "targets differ" if b.target != n.target else "input shapes differ" \
            if b.input_shape != n.input_shape else "thread counts differ" if base.threads != new.threads else None
        if skip:
            rows.append(CheckRow(recipe=name, device=new.device, metric="latency_ms", base=None, new=None, ratio=None,
                                 p_value=None, verdict="skipped", reason=skip))
            continue
        call_base = _runner(b.lib, b.input_shape, b.dtype, new.threads)
        call_new = _runner(n.lib, n.input_shape, n.dtype, new.threads)
        for attempt in range(retries + 1):
            verdict = judge(interleave(call_base, call_new, rounds), threshold, alpha)
            if verdict.verdict != Verdict.INCONCLUSIVE or attempt == retries:
                break
            log.warning("%s: %s; measuring again (%d/%d)", name, verdict.reason, attempt + 1, retries)
        if progress:
            log.info("%s: base %.3f ms, new %.3f ms (×%.3f, p = %.2g): %s", name, verdict.base_ms, verdict.new_ms,
                     verdict.ratio, verdict.p_value, verdict.verdict)
        rows.append(CheckRow(recipe=name, device=new.device, metric="latency_ms", base=verdict.base_ms,
                             new=verdict.new_ms, ratio=verdict.ratio, p_value=verdict.p_value,
                             verdict=verdict.verdict, reason=verdict.reason))
    return rows


# --- stored baseline ---------------------------------------------------------------------------------------------

def save_baseline(rows: list[Row], path: Path) -> Path:
    """The figures `check --against` compares, with their conditions, as a CSV file (written atomically)."""
    cells = [{"baseline_format": BASELINE_FORMAT, "recipe": r.recipe, "git_rev": r.git_rev, "noisy": r.noisy,
              **{c: getattr(r, c) for c in (*CONDITIONS, *METRICS)}} for r in rows]
    return write_atomic(path, pd.DataFrame(cells).to_csv(index=False))


def load_baseline(path: Path) -> pd.DataFrame:
    """A baseline file written by `check --save`, checked to be of this table version."""
    if not path.exists():
        raise HarnessError(f"--against {path}: no such file (write one with `harness check --save FILE`)")
    frame = read_cells(path, "baseline", KINDS | {"baseline_format": int})
    missing = [c for c in ("baseline_format", "recipe", *CONDITIONS, *METRICS) if c not in frame.columns]
    if missing or frame.empty or set(frame["baseline_format"]) != {BASELINE_FORMAT}:
        found = "no rows" if frame.empty and not missing else \
            f"columns {', '.join(missing)} missing" if missing else f"format {sorted(set(frame['baseline_format']))}"
        raise HarnessError(f"--against {path}: a baseline of another table version ({found}; this harness writes "
                           f"format {BASELINE_FORMAT}): save it again with `harness check --save`")
    return frame


def _condition(x: object) -> str | None:
    """A condition as compared: missing as None (a remote device has no thread count), 4.0 as 4."""
    if pd.isna(x):
        return None
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _value(x: object) -> float | None:
    return None if pd.isna(x) else float(x)


def _metric_row(recipe: str, device: str, metric: str, base: float | None, new: float | None, *,
                threshold: float, max_acc_drop: float, noisy: str | None) -> CheckRow:
    ratio = new / base if base and new is not None else None
    if base is None or new is None:
        verdict, reason = Verdict.INCONCLUSIVE, "missing on one side (e.g. untuned kernels leave vs_ort empty)"
    elif metric.startswith("top"):
        drop = base - new
        verdict = Verdict.REGRESSION if drop > max_acc_drop else Verdict.SAME
        reason = f"drop {drop:+.4f} {'>' if drop > max_acc_drop else '≤'} {max_acc_drop}"
    elif metric == "vs_ort" and noisy:
        verdict, reason = Verdict.INCONCLUSIVE, f"noisy: {noisy}"
    elif abs(ratio - 1) <= threshold:
        verdict, reason = Verdict.SAME, f"ratio within ±{threshold:.0%}"
    else:
        verdict = Verdict.REGRESSION if ratio > 1 else Verdict.FASTER
        reason = f"ratio beyond ±{threshold:.0%}"
    return CheckRow(recipe=recipe, device=device, metric=metric, base=base, new=new, ratio=ratio, p_value=None,
                    verdict=verdict, reason=reason)


def baseline_check(rows: list[Row], baseline: pd.DataFrame, *, threshold: float = 0.05,
                   max_acc_drop: float = 0.005) -> list[CheckRow]:
    """Each new row against the baseline row of the same recipe and device, metric by metric; a row whose
    conditions differ from its baseline's is listed as skipped, with the differing conditions."""
    out = []
    for row in rows:
        match = baseline[(baseline["recipe"] == row.recipe) & (baseline["device"] == row.device)]
        if match.empty:
            out.append(CheckRow(recipe=row.recipe, device=str(row.device), metric="-", base=None, new=None,
                                ratio=None, p_value=None, verdict="skipped", reason="not in the baseline"))
            continue
        ref = match.iloc[-1]
        differ = [c for c in CONDITIONS if _condition(ref[c]) != _condition(getattr(row, c))]
        if differ:
            out.append(CheckRow(recipe=row.recipe, device=str(row.device), metric="-", base=None, new=None,
                                ratio=None, p_value=None, verdict="skipped",
                                reason="conditions differ: " + ", ".join(f"{c} {ref[c]} → {getattr(row, c)}"
                                                                         for c in differ)))
            continue
        noisy = row.noisy or (ref["noisy"] if isinstance(ref["noisy"], str) else None)
        for metric in METRICS:
            base, new = _value(ref[metric]), _value(getattr(row, metric))
            if metric == "top5" and base is None and new is None:
                continue  # five classes or fewer
            out.append(_metric_row(row.recipe, str(row.device), metric, base, new, threshold=threshold,
                                   max_acc_drop=max_acc_drop, noisy=noisy))
    return out


# --- output ------------------------------------------------------------------------------------------------------

def _cell(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def table(rows: list[CheckRow]) -> pd.DataFrame:
    return pd.DataFrame([{"recipe": r.recipe, "device": r.device, "metric": r.metric, "base": _cell(r.base),
                          "new": _cell(r.new), "ratio": _cell(r.ratio), "p-value": _cell(r.p_value, 2),
                          "verdict": str(r.verdict), "why": r.reason} for r in rows])


def summary(rows: list[CheckRow]) -> str:
    code = exit_code(rows)
    counts = pd.Series([str(r.verdict) for r in rows]).value_counts().to_dict() if rows else {}
    word = {0: "passed", 1: "REGRESSION", 3: "inconclusive"}[code]
    return f"harness check {word}: " + (", ".join(f"{n} {v}" for v, n in counts.items()) or "nothing compared")


def write_outputs(rows: list[CheckRow], out: Path, context: dict[str, object]) -> tuple[Path, Path]:
    """The verdicts as Markdown (a pull-request comment) and JSON under `out`."""
    context = {"host": cpu_model(), **context}
    md = [f"### {summary(rows)}", "", markdown(table(rows)) if rows else "(nothing compared)", "",
          "<sub>" + "; ".join(f"{k}: {v}" for k, v in context.items()) + "</sub>", ""]
    md_path, json_path = write_atomic(out / "check.md", "\n".join(md)), out / "check.json"
    write_json(json_path, {"exit_code": exit_code(rows), "summary": summary(rows), **context,
                           "rows": [asdict(r) | {"verdict": str(r.verdict)} for r in rows]})
    return md_path, json_path
