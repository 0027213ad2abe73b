"""Generic machinery for tlassoc's configuration dataclasses.

Every setting is a field of one dataclass; this module turns those fields into plain dicts and
back (checking names and types, naming the dotted path of a bad field), parses command-line text
into a field's type, reads each field's one-line help from the class docstring, and replaces a
field deep inside a nested configuration. It imports neither torch nor TransformerLens, so the
``tlassoc`` command can build its help from it in a fraction of a second.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Inner:
    ...     '''Args:
    ...         width: How wide.
    ...     '''
    ...     width: int = 3
    >>> from_dict(Inner, {"width": 4})
    Inner(width=4)
    >>> from_dict(Inner, {"widht": 4}, path="model")
    Traceback (most recent call last):
    ...
    ValueError: unknown field 'model.widht'; expected one of ['width']
    >>> from_dict(Inner, {"widht": 4})
    Traceback (most recent call last):
    ...
    ValueError: unknown Inner field 'widht'; expected one of ['width']
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from typing import Any, Union

_NONE_WORDS = {"none", "null"}
_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}


def config_fields(cls: type) -> list[dataclasses.Field]:
    """The serialisable fields of a config class (``ClassVar`` and ``_private`` excluded)."""
    skip = getattr(cls, "_not_serialised", frozenset())
    return [f for f in dataclasses.fields(cls) if not f.name.startswith("_") and f.name not in skip]


def type_hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of ``cls`` (string annotations evaluated in its module)."""
    return typing.get_type_hints(cls)


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _kind(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _options(tp: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return typing.get_args(tp)
    return (tp,)


def coerce(value: Any, tp: Any, path: str) -> Any:
    """``value`` checked against the annotation ``tp`` (lists become tuples).

    Raises:
        ValueError: ``"path=value; expected <type>"`` when the value does not fit.

    Example:
        >>> coerce([1, 2], tuple[int, ...], "model.ffn_layers")
        (1, 2)
        >>> coerce("x", int | None, "model.d_head")
        Traceback (most recent call last):
        ...
        ValueError: model.d_head='x'; expected int | None
    """
    if tp is Any:
        return value
    errors = []
    for option in _options(tp):
        try:
            return _coerce_one(value, option, path)
        except (TypeError, ValueError) as err:
            errors.append(err)
    if len(errors) == 1 and "expected" in str(errors[0]) and not _is_simple(tp):
        raise errors[0]
    names = " | ".join(_kind(o) if o is not type(None) else "None" for o in _options(tp))
    raise ValueError(f"{path}={value!r}; expected {names}")


def _is_simple(tp: Any) -> bool:
    return tp in (int, float, str, bool, type(None))


def _coerce_one(value: Any, tp: Any, path: str) -> Any:
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if _is_config(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return from_dict(tp, value, path)
        raise TypeError
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{path}={value!r}; expected {len(args)} items")
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(coerce(v, a, f"{path}[{i}]") for i, (v, a) in pairs)
    if origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise TypeError
    raise TypeError(f"{path}: unsupported annotation {tp!r}")


def to_dict(config: Any) -> dict[str, Any]:
    """JSON-serialisable dict of a config dataclass (nested configs become nested dicts)."""
    out: dict[str, Any] = {}
    for f in config_fields(type(config)):
        out[f.name] = _plain(getattr(config, f.name))
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return value.to_dict()
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if type(value).__module__ == "torch":  # torch.dtype, torch.device
        return str(value).removeprefix("torch.")
    return value


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build ``cls`` from a dict, naming the dotted path of an unknown or ill-typed field."""
    where = path or cls.__name__
    if not isinstance(data, dict):
        raise ValueError(f"{where}={data!r}; expected a mapping of {cls.__name__} fields")
    hints = type_hints(cls)
    names = [f.name for f in config_fields(cls)]
    for key in data:
        if key not in names:
            if path:
                full = f"{path}.{key}"
                raise ValueError(f"unknown field {full!r}; expected one of {sorted(names)}")
            raise ValueError(
                f"unknown {cls.__name__} field {key!r}; expected one of {sorted(names)}"
            )
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else key
        kwargs[key] = coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except ValueError as err:
        if path and not str(err).startswith(path):
            raise ValueError(f"{path}.{err}") from None
        raise


def parse_text(text: str, tp: Any, path: str) -> Any:
    """A command-line string turned into a value of annotation ``tp``.

    Numbers, ``true``/``false``, ``none``, comma-separated tuples (``0,1``) and JSON are
    understood.

    Example:
        >>> parse_text("0,2", tuple[int, ...], "model.ffn_layers")
        (0, 2)
        >>> parse_text("none", int | None, "model.d_head") is None
        True
        >>> parse_text("1e-3", float, "train.lr")
        0.001
    """
    raw = text.strip()
    if type(None) in _options(tp) and raw.lower() in _NONE_WORDS:
        return None
    for option in _options(tp):
        try:
            return coerce(_parse_one(raw, option), tp, path)
        except (TypeError, ValueError, json.JSONDecodeError):
            continue
    names = " | ".join(_kind(o) if o is not type(None) else "None" for o in _options(tp))
    raise ValueError(f"{path}={text!r}; expected {names}")


def _parse_one(raw: str, tp: Any) -> Any:
    low = raw.lower()
    if tp is type(None):
        if low in _NONE_WORDS:
            return None
        raise ValueError
    if tp is bool:
        if low in _TRUE_WORDS:
            return True
        if low in _FALSE_WORDS:
            return False
        raise ValueError
    if tp is int:
        return int(raw)
    if tp is float:
        value = float(raw)
        if math.isnan(value) and low != "nan":
            raise ValueError
        return value
    if tp is str:
        return raw
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if raw.startswith("["):
            return json.loads(raw)
        if raw == "":
            return ()
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        inner = args[0] if args and (len(args) == 1 or args[-1] is Ellipsis) else None
        if inner is None:
            if len(parts) != len(args):
                raise ValueError
            return [_parse_one(p, a) for p, a in zip(parts, args, strict=True)]
        return [parse_text(p, inner, "") for p in parts]
    if origin is dict or _is_config(tp) or tp is Any:
        return json.loads(raw)
    raise ValueError


_ARG_LINE = re.compile(r"^\s{4,8}(\w+)(?: \([^)]*\))?:\s*(.*)$")


def field_docs(cls: type) -> dict[str, str]:
    """Each field's help text, read from the ``Args:`` section of the class docstring (and of
    its base classes)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        text = klass.__dict__.get("__doc__") or ""
        if "Args:" not in text:
            continue
        current = None
        for line in text.split("Args:", 1)[1].splitlines():
            m = _ARG_LINE.match(line)
            if m and len(line) - len(line.lstrip()) <= 8:
                current = m.group(1)
                docs[current] = m.group(2).strip()
            elif current and line.strip() and len(line) - len(line.lstrip()) > 8:
                docs[current] += " " + line.strip()
            elif not line.strip():
                continue
            else:
                current = None
    return docs


def walk_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, Any, str]]:
    """``(dotted path, annotation, default, help)`` for every leaf field of a nested config."""
    hints, docs = type_hints(cls), field_docs(cls)
    out = []
    for f in config_fields(cls):
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        if _is_config(tp):
            out += walk_fields(tp, prefix=f"{path}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = dataclasses.MISSING
        out.append((path, tp, default, docs.get(f.name, "")))
    return out


def resolve(cls: type, path: str) -> Any:
    """The annotation of the field at dotted ``path`` of config class ``cls``.

    Raises:
        ValueError: naming the unknown part of the path and the fields that exist there.
    """
    parts = path.split(".")
    tp: Any = cls
    for i, part in enumerate(parts):
        if not _is_config(tp):
            raise ValueError(f"unknown field {path!r}; {'.'.join(parts[:i])} has no fields")
        hints = type_hints(tp)
        names = [f.name for f in config_fields(tp)]
        if part not in names:
            where = ".".join(parts[:i])
            known = sorted(f"{where}.{n}" if where else n for n in names)
            raise ValueError(f"unknown field {path!r}; expected one of {known}")
        tp = hints[part]
    return tp


def replace_path(config: Any, path: str, value: Any) -> Any:
    """A copy of ``config`` with the field at dotted ``path`` set to ``value`` (type-checked).

    Nested configs are rebuilt through their ``replace`` method when they have one, so values
    derived from the changed field are derived again.
    """
    tp = resolve(type(config), path)
    value = coerce(value, tp, path)
    head, _, rest = path.partition(".")
    if rest:
        value = replace_path(getattr(config, head), rest, value)
    if hasattr(config, "replace"):
        return config.replace(**{head: value})
    return dataclasses.replace(config, **{head: value})


def describe(value: Any) -> str:
    """A short text of a default value for help output."""
    if value is dataclasses.MISSING:
        return "required"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) if value else "()"
    return str(value)


__all__ = [
    "coerce",
    "config_fields",
    "describe",
    "field_docs",
    "from_dict",
    "parse_text",
    "replace_path",
    "resolve",
    "to_dict",
    "type_hints",
    "walk_fields",
]
