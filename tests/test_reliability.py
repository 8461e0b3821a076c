"""Hostile-but-fair input: any malformed recipe, profile, YAML file or flag is a one-line error (exit 2), never a
traceback, and nothing under results/ changes. Generated with hypothesis: a few hundred cases here, thousands
in the slow suite (`HYPOTHESIS_PROFILE=thorough`, set by `tox -e slow` and CI)."""

import argparse
import math
import os
from pathlib import Path

import pytest
import yaml
from conftest import TINY_RECIPE
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from harness.cli import build_parser, main
from harness.compile.target import build_target
from harness.device import DEVICES_DIR, DeviceProfile
from harness.errors import HarnessError
from harness.recipe import recipe_from_dict
from harness.schema import from_dict, load_yaml

settings.register_profile("default", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

NASTY = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**12), 10**12), st.booleans(), st.none(),
    st.sampled_from([0, -1, 1, 7, 8, 2049, 100_000, 1e6, 0.5, 1.5, -0.0, "", "nan", "1", "x" * 200]),
    st.text(max_size=12), st.lists(st.integers(), max_size=4), st.lists(st.integers(), min_size=300, max_size=301),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=3),
)
SECTIONS = {
    "model": ["name", "width", "weights", "depth"],
    "data": ["name", "resolution", "path", "val_fraction", "eval_samples", "seed", "size"],
    "train": ["epochs", "lr", "batch_size", "optimizer", "weight_decay", "seed", "momentum"],
    "measure": ["batch", "repeats", "number", "warmup", "tolerance", "int8_tolerance", "peers", "runs"],
    "tune": ["trials", "minutes", "budget"],
}
STEP = st.one_of(
    st.fixed_dictionaries({"width": NASTY}), st.fixed_dictionaries({"resolution": NASTY}),
    st.fixed_dictionaries({"prune": st.fixed_dictionaries({"ratio": NASTY}, optional={
        "importance": NASTY, "global": NASTY, "round_to": NASTY, "iterative_steps": NASTY,
        "layer_ratios": st.dictionaries(st.text(max_size=8), NASTY, max_size=2), "ignore": NASTY})}),
    st.fixed_dictionaries({"finetune": st.fixed_dictionaries({}, optional={
        "epochs": NASTY, "lr": NASTY, "distill_weight": NASTY, "temperature": NASTY, "batch_size": NASTY})}),
    st.fixed_dictionaries({"quantize": st.fixed_dictionaries({}, optional={
        "dtype": NASTY, "calibration": NASTY, "calibration_samples": NASTY, "per_channel": NASTY})}),
    st.dictionaries(st.text(max_size=8), NASTY, max_size=2), NASTY,
)


@st.composite
def recipes(draw: st.DrawFn) -> dict:
    """The tiny recipe with one to three of its values (or steps) replaced by something hostile."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY_RECIPE.items()}
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from([*SECTIONS, "steps", "top"]))
        if section == "steps":
            data["steps"] = draw(st.one_of(st.lists(STEP, max_size=3), NASTY))
        elif section == "top":
            data[draw(st.sampled_from(["description", "sweep", "extra", "model"]))] = draw(NASTY)
        else:
            if not isinstance(data.get(section, {}), dict):
                data[section] = {}
            data.setdefault(section, {})[draw(st.sampled_from(SECTIONS[section]))] = draw(NASTY)
    return data


def _is_one_line_error(err: str) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) < 600 and "Traceback" not in err


@given(data=recipes())
def test_any_recipe_mapping_loads_or_is_a_harness_error(data: dict) -> None:
    try:
        recipe = recipe_from_dict(data, "fuzz.yaml")
    except HarnessError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 600
        return
    for value in (recipe.width, recipe.resolution, recipe.train.lr, recipe.measure.tolerance):
        assert math.isfinite(value)
    assert 8 <= recipe.resolution <= 2048 and 1 <= recipe.measure.batch <= 1024


@given(data=recipes())
@example(data=TINY_RECIPE | {"sweep": {"\x1e": 0}})  # a key Python's splitlines breaks at (found by a CI run)
def test_cli_refuses_a_bad_recipe_in_one_line_and_leaves_results_alone(data: dict, tmp_path_factory, capsys) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "results").mkdir()
    (folder / "results" / "results.csv").write_text("run_id,recipe,device\nkept,r,x86\n")
    recipe = folder / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    # A recipe that loads stops at the unknown device: the run trains nothing either way.
    code = main(["-q", "run", str(recipe), "--device", "nosuch", "--results", str(folder / "results")])
    assert code == 2 and _is_one_line_error(capsys.readouterr().err)
    assert (folder / "results" / "results.csv").read_text() == "run_id,recipe,device\nkept,r,x86\n"
    assert sorted(p.name for p in (folder / "results").iterdir()) == ["results.csv"]


X86 = yaml.safe_load((DEVICES_DIR / "x86.yaml").read_text())
PROFILE_KEYS = ["threads", "layout", "gpu", "cross_compiler", "tags", "host_target", "bogus"]
TARGET_KEYS = ["kind", "mcpu", "mattr", "mtriple", "num-cores"]
REMOTE_KEYS = ["key", "tracker", "direct", "timeout_s", "session_timeout_s", "priority"]


@st.composite
def profiles(draw: st.DrawFn) -> dict:
    data = {**X86, "target": dict(X86["target"])}
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["profile", "target", "remote", "emulator"]))
        value = draw(st.one_of(NASTY, st.sampled_from(["nosuchcpu", ["+nosuchfeature"], "aarch64-linux-gnu",
                                                       "x86-64-v3", ["+avx2"], "host:0", "host:99999", "h:9190"])))
        if where == "profile":
            data[draw(st.sampled_from(PROFILE_KEYS))] = value
        elif where == "target":
            data["target"][draw(st.sampled_from(TARGET_KEYS))] = value
        else:
            section = data.setdefault(where, {"key": "k"} if where == "remote" else {"arch": "arm64"})
            if isinstance(section, dict):
                section[draw(st.sampled_from(REMOTE_KEYS if where == "remote" else ["port", "tracker_port", "qemu"]))] \
                    = value
    return data


@given(data=profiles())
@example(data={"target": {"kind": "llvm", "mcpu": "", "mtriple": "\n"}, "threads": 2})  # found by the fuzzer
@example(data={"target": {"kind": "llvm", "mcpu": "x86-64-v3", "mtriple": "\n"}, "threads": 2})
def test_any_profile_loads_and_builds_its_target_or_is_a_harness_error(data: dict) -> None:
    try:
        build_target(from_dict(DeviceProfile, {"name": "fuzz", **data}, "fuzz.yaml"))
    except HarnessError as exc:
        assert "\n" not in str(exc).strip()


FLAGS = {
    "run": ["--batch", "--eval-samples", "--tune-minutes", "--gpu"],
    "sweep": ["--width", "--resolution", "--dtype"],
    "tune": ["--trials", "--minutes"],
    "bench": ["--rounds", "--repeats"],
    "sensitivity": ["--ratios", "--max-drop"],
    "inspect": ["--width", "--resolution", "--classes"],
    "results": ["--last"],
    "emulator": ["--boards", "--drop-after"],
}
VALUE_TEXT = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(str), st.integers(-(10**9), 10**9).map(str),
                       st.text(max_size=10), st.sampled_from(["1,0", "0.5,", ",", "1e309", "-0", "fp32,int4"]))


def _dest(command: str, flag: str) -> str:
    """The attribute a subcommand's flag parses into (an alias such as --repeats shares --rounds' dest)."""
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return next(a.dest for a in subparsers.choices[command]._actions if flag in a.option_strings)


@given(command=st.sampled_from(sorted(FLAGS)), data=st.data())
def test_any_flag_value_parses_in_range_or_is_a_one_line_usage_error(command: str, data: st.DataObject,
                                                                     capsys) -> None:
    flag, value = data.draw(st.sampled_from(FLAGS[command])), data.draw(VALUE_TEXT)
    positional = {"inspect": ["mobilenet_v1"], "emulator": ["status"], "results": []}.get(command, ["v1_fp32"])
    try:
        args = build_parser().parse_args([command, *positional, f"{flag}={value}"])
    except SystemExit as exc:
        assert exc.code == 2 and _is_one_line_error(capsys.readouterr().err)
        return
    parsed = getattr(args, _dest(command, flag))
    for number in parsed if isinstance(parsed, list) else [parsed]:
        assert isinstance(number, str) or (math.isfinite(number) and number >= 0)


@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_any_file_as_a_recipe_is_a_mapping_or_a_one_line_error(raw: bytes, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("yaml") / "r.yaml"
    path.write_bytes(raw)
    try:
        assert isinstance(load_yaml(path), dict)
    except HarnessError as exc:
        assert "\n" not in str(exc).strip() and len(str(exc)) < 600


@pytest.mark.parametrize(("text", "message"), [
    ("a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
     "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
     "too large once its aliases are expanded"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than"),
    ("model: {name: mobilenet_v1}\nmodel: {name: mobilenet_v2}\n", "duplicate key 'model'"),
    (b"description: caf\xe9\n", "not UTF-8 text"),
    ("description: x\n" + "#" * 1_000_001, "too large for a recipe"),
])
def test_hostile_yaml_is_refused_quickly(text: str | bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(HarnessError, match=message):
        load_yaml(path)


def _recipe_with(**changes: dict) -> dict:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY_RECIPE.items()}
    for section, values in changes.items():
        if section == "steps":
            data["steps"] = values
        else:
            data[section] = {**data.get(section, {}), **values}
    return data


@pytest.mark.parametrize(("args", "message"), [
    (["inspect", "mobilenet_v1", "--width", "-1"], "--width: must be in (0, 4]"),
    (["inspect", "mobilenet_v1", "--width", "nan"], "--width: must be a finite number"),
    (["inspect", "mobilenet_v2", "--width", "1e6"], "--width: must be in (0, 4]"),
    (["inspect", "mobilenet_v1", "--resolution", "7"], "--resolution: must be in [8, 2048]"),
    (["inspect", "mobilenet_v1", "--resolution", "100000"], "--resolution: must be in [8, 2048]"),
    (["inspect", "mobilenet_v1", "--classes", "0"], "--classes: must be in [2, 100000]"),
    (["inspect", "vgg16", "--resolution", "8"], "VGG cannot take a 8x8 input: Given input size: (512x1x1)"),
    (["inspect", "vit_b_16", "--resolution", "32"], "VisionTransformer cannot take a 32x32 input"),
    (["results", "--last", "-5"], "--last: must be in [1, 1000000]"),
    (["run", "v1_fp32", "--batch", "1,,2"], "--batch: expected a whole number in [1, 1024], got ''"),
    (["tune", "--remeasure", "--batch", "4"], "tune --batch: the batch sizes of the recipes named (or --shipped)"),
    (["tune", "v1_fp32", "--trials", "-1"], "--trials: must be in [0, 10000000]"),
    (["tune", "v1_fp32", "--minutes", "0"], "--minutes: must be in (0, 10080]"),
    (["bench", "v1_fp32", "--repeats", "0"], "--rounds/--repeats: must be in [1, 100000]"),
    (["sensitivity", "v1_fp32", "--ratios", "1.5"], "--ratios: must be in [0, 1)"),
    (["sensitivity", "v1_fp32", "--max-drop", "-1"], "--max-drop: must be in [0, 1]"),
    (["run", "v1_fp32", "--results", "{file}"], "not a folder"),
])
def test_reported_flag_cases_are_one_line_errors(args: list[str], message: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    args = [a.replace("{file}", str(tmp_path / "file")) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert _is_one_line_error(err) and message in err, err


@pytest.mark.parametrize(("recipe", "profile", "message"), [
    (_recipe_with(model={"width": float("nan")}), None, "expected a finite number"),
    (_recipe_with(model={"width": 5}), None, "width must be in (0, 4]"),
    (_recipe_with(data={"resolution": 100000}), None, "resolution must be in [8, 2048]"),
    (_recipe_with(steps=[{"resolution": 100000}]), None, "must be in [8, 2048]"),
    (_recipe_with(steps=[{"resolution": 0.01}]), None, "resolution 0.01 × 32 px is below the smallest input, 8 px"),
    (_recipe_with(measure={"batch": 1000000}), None, "batch must be in [1, 1024]"),
    (_recipe_with(measure={"tolerance": float("nan")}), None, "expected a finite number"),
    (_recipe_with(measure={"tolerance": -1}), None, "tolerance must be in [0, 1000]"),
    (_recipe_with(train={"lr": float("inf")}), None, "expected a finite number"),
    (_recipe_with(steps=[{"prune": {"ratio": 0.5, "global_pruning": True}}]), None,
     "unknown key 'global_pruning'; allowed: global, ignore"),
    (_recipe_with(steps=[{"prune": {"ratio": 0.5, "layer_ratios": {"nosuch*": 0.3}}}]), None,
     "prune.layer_ratios: no module of MobileNetV1 matches 'nosuch*'"),
    (TINY_RECIPE, {"target": {"kind": "llvm", "mcpu": "nosuchcpu"}}, "LLVM knows no CPU 'nosuchcpu'"),
    (TINY_RECIPE, {"target": {"kind": "llvm", "mattr": ["+nosuchfeature"]}}, "LLVM knows no feature 'nosuchfeature'"),
    (TINY_RECIPE, {"target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}},
     "cannot run on this"),
    (TINY_RECIPE, {"target": {"kind": "llvm"}, "threads": 1000}, "threads must be in [1, 256]"),
    (TINY_RECIPE, {"target": {"kind": "vulkan"}}, "target.kind must be one of llvm, cuda, got 'vulkan'"),
    (TINY_RECIPE, {"target": {"kind": "cuda"}, "host_target": {"kind": "c"}}, "host_target.kind must be one of llvm"),
    ({"model": {"name": "vgg16"}, "data": {"name": "digits", "resolution": 16}, "train": {"epochs": 0}}, None,
     "recipe r: VGG cannot take a 16x16 input"),
    (TINY_RECIPE, {"target": {"kind": "llvm"}, "remote": {"key": "k", "tracker": "h:9190", "timeout_s": -1}},
     "timeout_s must be in (0, 604800]"),
    (TINY_RECIPE, {"target": {"kind": "llvm"}, "remote": {"key": "k", "tracker": "h:0"}}, "port must be in [1, 65535]"),
])
def test_reported_recipe_and_profile_cases_are_one_line_errors(recipe: dict, profile: dict | None, message: str,
                                                               tmp_path: Path, capsys) -> None:
    """The cases of the reliability report: each stops before anything is trained, results untouched."""
    path, results = tmp_path / "r.yaml", tmp_path / "results"
    path.write_text(yaml.safe_dump(recipe))
    device = ["--device", "x86"]
    if profile is not None:
        (tmp_path / "p.yaml").write_text(yaml.safe_dump({"name": "p", **profile}))
        device = ["--device", str(tmp_path / "p.yaml")]
    assert main(["-q", "run", str(path), *device, "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert _is_one_line_error(err) and message in err, err
    assert not (results / "results.csv").exists() and not list(results.glob("cache/models/*/model.pt"))


@pytest.mark.parametrize(("content", "message"), [
    (b"\x80\x03junk-that-is-no-pickle", "not a PyTorch checkpoint of tensors"),
    ([1, 2, 3], "holds a list, not a state_dict"),
    ({"weight": [1.0]}, "do not fit model 'test_mobilenet_v1': Missing key(s) in state_dict"),
], ids=["bytes", "list", "foreign"])
def test_a_weights_file_that_is_not_the_models_state_dict_is_one_line(content, message: str, tmp_path: Path,
                                                                      capsys) -> None:
    import torch

    weights, results = tmp_path / "w.pt", tmp_path / "results"
    if isinstance(content, bytes):
        weights.write_bytes(content)
    else:
        torch.save({k: torch.tensor(v) for k, v in content.items()} if isinstance(content, dict) else content, weights)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_recipe_with(model={"weights": str(weights)})))
    assert main(["-q", "run", str(recipe), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert _is_one_line_error(err) and message in err, err
    assert not (results / "results.csv").exists()
