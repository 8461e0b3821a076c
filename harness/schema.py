"""Strict YAML/dict → frozen dataclass conversion shared by recipes and device profiles.

Unknown keys and wrong types are rejected with a `HarnessError` naming the file, the key and what is
allowed, so that a misspelled option never passes silently.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from harness.errors import HarnessError

T = TypeVar("T")


MAX_YAML_BYTES = 1_000_000  # recipes and profiles are a few hundred bytes
MAX_YAML_NODES = 100_000  # after expanding aliases: refuses "billion laughs" alias bombs
MAX_YAML_DEPTH = 64


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses duplicate keys (the last one would silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _check_size(node: yaml.Node, where: str) -> None:
    """Refuse a document that expands (through aliases) to too many nodes, or nests too deeply."""
    count, stack = 0, [(node, 1)]
    while stack:
        current, depth = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            raise HarnessError(f"{where}: too large once its aliases are expanded (over {MAX_YAML_NODES} values)")
        if depth > MAX_YAML_DEPTH:
            raise HarnessError(f"{where}: nested deeper than {MAX_YAML_DEPTH} levels")
        if isinstance(current, yaml.SequenceNode):
            stack += [(child, depth + 1) for child in current.value]
        elif isinstance(current, yaml.MappingNode):
            stack += [(child, depth + 1) for pair in current.value for child in pair]


def _parse_yaml(text: str, where: str) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node, where)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing, oversized, undecodable or invalid file."""
    p = Path(path)
    if p.is_dir():
        raise HarnessError(f"{p}: a folder, not a YAML file")
    if not p.is_file():
        raise HarnessError(f"{p}: file not found")
    if p.stat().st_size > MAX_YAML_BYTES:
        raise HarnessError(f"{p}: {p.stat().st_size} bytes is too large for a recipe or profile "
                           f"(at most {MAX_YAML_BYTES})")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HarnessError(f"{p}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})") from None
    try:
        data = _parse_yaml(text, str(p))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise HarnessError(f"{p}: invalid YAML{where}: {problem[:200]}") from None
    except RecursionError:
        raise HarnessError(f"{p}: nested deeper than {MAX_YAML_DEPTH} levels") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def shown(value: Any, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def convert(tp: Any, value: Any, where: str) -> Any:
    """Convert `value` to type `tp` (dataclass, enum, list, dict, scalar), or raise naming `where`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(arg, value, where)
            except HarnessError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise HarnessError(f"{where}: expected {_type_name(tp)}, got {shown(value)}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise HarnessError(f"{where}: {shown(value)} is not allowed; expected {_type_name(tp)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise HarnessError(f"{where}: expected a list, got {shown(value)}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise HarnessError(f"{where}: expected a mapping, got {shown(value)}")
        kt, vt = typing.get_args(tp)
        return {convert(kt, k, where): convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise HarnessError(
                f"{where}: {shown(value)} is not allowed; expected {_type_name(tp)}"
            ) from None
    if isinstance(value, float) and tp in (int, float) and not math.isfinite(value):
        raise HarnessError(f"{where}: expected a finite number, got {shown(value)}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise HarnessError(f"{where}: expected {tp.__name__}, got {shown(value)}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise HarnessError(f"{where}: expected {_type_name(tp)}, got {shown(value)}")
    return value


INTERNAL = "internal"  # field metadata: set by the harness, not a key of the YAML file


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping; unknown or missing keys are errors naming `where`."""
    if not isinstance(data, dict):
        raise HarnessError(f"{where}: expected a mapping, got {shown(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if f.init and not f.metadata.get(INTERNAL)}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise HarnessError(
            f"{where}: unknown key {shown(unknown[0])}; allowed: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = convert(hints[name], data[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise HarnessError(f"{where}: missing required key {name!r}")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise HarnessError(f"{where}: {exc}") from None


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        data = {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {"__type__": type(obj).__name__, **data}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items())}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def content_hash(obj: Any, length: int = 16) -> str:
    """Stable short hash of dataclasses, mappings and scalars."""
    text = json.dumps(_jsonable(obj), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
