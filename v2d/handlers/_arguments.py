"""
The arguments of a custom handler call, taken from an HTTP request.

MLServer lets FastAPI inject them; v2d does the useful part of that without FastAPI:

- one parameter (besides ``self``) takes the whole JSON body; several take the
  body's members by name (the body must then be a JSON object);
- a parameter the body does not give comes from the query string, by name, its text
  converted to the parameter's annotated type (``int``, ``float``, ``bool``, ``str``,
  a ``list`` of those for repeated names);
- else its default; with none, the request fails naming the parameter.

FastAPI's ``Body(...)`` / ``Query(...)`` defaults are understood when a runtime uses
them (required when their default is ``...``; ``Query`` reads the query string only;
``Body(embed=True)`` takes the body's member), without importing FastAPI.
JSON values are checked against simple annotations (``int``, ``float``, ``str``,
``bool``, ``list``, ``dict``); anything else is passed as parsed.

Imported by worker children (Python 3.9 and up): standard library only.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Callable, Dict, List, Optional, Tuple

from v2d.errors import InvalidArgument

__all__ = ["bind_arguments", "call_handler"]

_SKIPPED = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_JSON_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "a boolean",
    list: "a list",
    dict: "an object",
}
_NAMED_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}
#: ``typing.Union`` and, from Python 3.10, the ``X | Y`` union.
_UNIONS = tuple(u for u in (typing.Union, getattr(types, "UnionType", None)) if u is not None)


def _fastapi_marker(default: Any) -> Optional[str]:
    """'Body', 'Query', ... when ``default`` is a FastAPI parameter marker."""
    cls = type(default)
    if cls.__module__.split(".")[0] == "fastapi" and hasattr(default, "default"):
        return cls.__name__
    return None


def _default(parameter: inspect.Parameter) -> Tuple[bool, Any]:
    """(has a default, the default), FastAPI markers unwrapped."""
    default = parameter.default
    if default is inspect.Parameter.empty:
        return False, None
    if _fastapi_marker(default) is not None:
        inner = default.default
        if inner is Ellipsis or type(inner).__name__ == "PydanticUndefinedType":
            return False, None
        return True, inner
    return True, default


def _annotations(fn: Callable[..., Any]) -> Dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # names the server cannot resolve: keep what is written
        hints = {}
        for name, parameter in inspect.signature(fn).parameters.items():
            annotation = parameter.annotation
            if isinstance(annotation, str):
                annotation = _NAMED_TYPES.get(annotation.split("[")[0].strip(), annotation)
            hints[name] = annotation
        return hints


def _plain(annotation: Any) -> Tuple[Any, Any]:
    """(outer type, item type) of an annotation: Optional unwrapped, List[X] as (list, X)."""
    origin = typing.get_origin(annotation)
    if origin in _UNIONS:
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) == 1:
            return _plain(options[0])
        return None, None
    if origin in (list, List):
        args = typing.get_args(annotation)
        return list, (args[0] if args else None)
    if origin is not None:
        return origin, None
    return annotation, None


def _convert_text(name: str, text: str, kind: Any) -> Any:
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise InvalidArgument(f"query parameter '{name}' must be true or false, got {text!r}")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            expected = _JSON_NAMES[kind]
            raise InvalidArgument(f"query parameter '{name}' must be {expected}, got {text!r}") from None
    return text


def _from_query(name: str, values: List[str], annotation: Any) -> Any:
    outer, item = _plain(annotation)
    if outer is list:
        return [_convert_text(name, v, item) for v in values]
    return _convert_text(name, values[-1], outer)


def _check_json(name: str, value: Any, annotation: Any) -> Any:
    outer, _ = _plain(annotation)
    if outer not in _JSON_NAMES or (value is None and typing.get_origin(annotation) in _UNIONS):
        return value
    ok = isinstance(value, outer) and not (outer in (int, float) and isinstance(value, bool))
    if outer is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise InvalidArgument(f"argument '{name}' must be {_JSON_NAMES[outer]}, got {type(value).__name__}")
    return value


def bind_arguments(
    fn: Callable[..., Any], has_body: bool, body: Any, query: Dict[str, List[str]]
) -> Tuple[List[Any], Dict[str, Any]]:
    """(args, kwargs) for calling ``fn`` (a bound method) with a request's JSON body and query."""
    parameters = [p for p in inspect.signature(fn).parameters.values() if p.kind not in _SKIPPED]
    hints = _annotations(fn)
    from_body = [p for p in parameters if _fastapi_marker(p.default) != "Query"]
    whole = len(from_body) == 1 and not getattr(from_body[0].default, "embed", False)
    if has_body and not whole and from_body and not isinstance(body, dict):
        names = ", ".join(f"'{p.name}'" for p in from_body)
        raise InvalidArgument(f"request body must be a JSON object with the members {names}")
    args: List[Any] = []
    kwargs: Dict[str, Any] = {}
    for parameter in parameters:
        name = parameter.name
        annotation = hints.get(name, parameter.annotation)
        marker = _fastapi_marker(parameter.default)
        if marker != "Query" and has_body and whole and parameter is from_body[0]:
            value = _check_json(name, body, annotation)
        elif marker != "Query" and has_body and not whole and name in body:
            value = _check_json(name, body[name], annotation)
        elif marker != "Body" and name in query:
            value = _from_query(name, query[name], annotation)
        else:
            present, value = _default(parameter)
            if not present:
                where = "the query string" if marker == "Query" else "the JSON body or the query string"
                if whole and marker != "Query" and parameter is from_body[0]:
                    where = "the JSON body"
                raise InvalidArgument(f"missing argument '{name}' (expected in {where})")
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            args.append(value)
        else:
            kwargs[name] = value
    return args, kwargs


def call_handler(runtime: Any, attribute: str, has_body: bool, body: Any, query: Dict[str, List[str]]) -> Any:
    """Call the runtime's custom handler ``attribute`` with a request's body and query; its result."""
    method = getattr(getattr(runtime, "custom_handler_target", runtime), attribute, None)
    if not callable(method):
        raise InvalidArgument(f"model has no custom handler {attribute!r}")
    args, kwargs = bind_arguments(method, has_body, body, query)
    return method(*args, **kwargs)
