"""
``@decode_args``: a ``predict`` written with typed arguments instead of an
``InferenceRequest``.

::

    class Model(MLModel):
        @decode_args
        def predict(self, questions: List[str], context: List[str]) -> np.ndarray:
            ...

Each input is passed to the parameter of its name, decoded by the codec of the
parameter's type hint; a request codec parameter (e.g. ``pd.DataFrame``) receives
every input no other parameter takes. The return value is encoded by the codec of the
return hint (a ``Tuple[...]`` return gives one output per item). Outputs are named by
the request's ``outputs``, else by the model's declared outputs, else ``output-0``,
``output-1``... (MLServer's names).

A plain ``def`` stays synchronous (the wrapper returns the ``InferenceResponse``, or a
Deferred if the function returned one); an ``async def`` gives an ``async def``
wrapper. Type hints are resolved once, when decorating (or at the first call if they
name something not yet defined then).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from typing import Any, Callable, Dict, List, Optional, Tuple

from v2d.codecs._base import DEFAULT_OUTPUT_PREFIX, InputCodec, RequestCodec
from v2d.codecs._errors import CodecError, CodecNotFound, InputsNotFound, OutputNotFound
from v2d.codecs._registry import (
    find_input_codec,
    find_input_codec_by_payload,
    find_request_codec,
    find_request_codec_by_payload,
)
from v2d.errors import InferenceError
from v2d.types import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput

__all__ = ["SignatureCodec", "as_list", "decode_args"]

_UnionType = getattr(types, "UnionType", None)
_NO_DEFAULT = inspect.Parameter.empty

# How a parameter is filled.
_INPUT = "input"  # decoded by an input codec
_RAW = "raw"  # the RequestInput itself
_REQUEST = "request"  # a request codec over the inputs no other parameter takes


def _unwrap_optional(hint: Any) -> Tuple[bool, Any]:
    """(whether ``hint`` admits None, the hint without None)."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or (_UnionType is not None and origin is _UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) < len(typing.get_args(hint)):
            if len(args) == 1:
                return True, args[0]
            return True, typing.Union[tuple(args)]
    return False, hint


def _type_hints(fn: Callable[..., Any]) -> Dict[str, Any]:
    """
    ``fn``'s annotations, evaluated; also the forms ``typing`` refuses, such as a plain
    tuple of types as the return annotation (``-> (np.ndarray, pd.DataFrame)``).
    """
    try:
        return typing.get_type_hints(fn)
    except TypeError:
        pass
    target = inspect.unwrap(fn)
    namespace = getattr(target, "__globals__", {})
    hints = {}
    for name, value in getattr(target, "__annotations__", {}).items():
        hints[name] = eval(value, namespace) if isinstance(value, str) else value  # noqa: S307
    return hints


def _is_request_codec(codec: Any) -> bool:
    if isinstance(codec, type):
        return issubclass(codec, RequestCodec)
    return isinstance(codec, RequestCodec) or (
        not isinstance(codec, InputCodec) and hasattr(codec, "decode_request")
    )


def _hint_name(hint: Any) -> str:
    if isinstance(hint, type):
        return f"{hint.__module__}.{hint.__qualname__}" if hint.__module__ != "builtins" else hint.__name__
    return repr(hint).replace("typing.", "")


class _Param:
    """How one parameter of ``predict`` is filled."""

    __slots__ = ("name", "kind", "codec", "optional", "default")

    def __init__(self, name: str, kind: str, codec: Any, optional: bool, default: Any) -> None:
        self.name = name
        self.kind = kind
        self.codec = codec
        self.optional = optional
        self.default = default


class _Output:
    """How one item of ``predict``'s return value is encoded (``codec`` None: by payload)."""

    __slots__ = ("hint", "codec", "optional")

    def __init__(self, hint: Any, codec: Any, optional: bool) -> None:
        self.hint = hint
        self.codec = codec
        self.optional = optional


_BY_PAYLOAD = _Output(None, None, True)


class _SignatureCodec:
    """The codecs of one ``predict``'s parameters and return value."""

    def __init__(self, predict: Callable[..., Any], method: bool = False) -> None:
        self._predict = predict
        self._method = method
        self._qualname = getattr(predict, "__qualname__", repr(predict))
        self._resolved = False
        self._params: Dict[str, _Param] = {}
        self._request_param: Optional[_Param] = None
        self._outputs: Optional[List[_Output]] = None  # None: not a tuple
        self._variadic: Optional[_Output] = None  # Tuple[X, ...]
        self._single: _Output = _BY_PAYLOAD
        self._response_passthrough = False

    # -- resolving the signature (once) ------------------------------------------

    def resolve(self, *, defer_name_errors: bool = False) -> None:
        if self._resolved:
            return
        try:
            hints = _type_hints(self._predict)
        except NameError:
            if defer_name_errors:
                return
            raise
        signature = inspect.signature(self._predict)
        parameters = list(signature.parameters.values())
        if parameters and parameters[0].name == "self" or self._method:
            parameters = parameters[1:]
        params: Dict[str, _Param] = {}
        request_param: Optional[_Param] = None
        for p in parameters:
            if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            if p.kind is inspect.Parameter.POSITIONAL_ONLY:
                raise TypeError(f"{self._qualname}: parameter '{p.name}' cannot be positional-only")
            if p.name not in hints:
                raise CodecNotFound(f"{self._qualname}: parameter '{p.name}' has no type hint")
            optional, hint = _unwrap_optional(hints[p.name])
            if hint is RequestInput:
                param = _Param(p.name, _RAW, None, optional, p.default)
            else:
                codec: Any = find_input_codec(type_hint=hint)
                kind = _INPUT
                if codec is None:
                    codec = find_request_codec(type_hint=hint)
                    kind = _REQUEST
                if codec is None:
                    raise CodecNotFound(
                        f"{self._qualname}: no codec for parameter '{p.name}' of type {_hint_name(hint)}"
                    )
                if kind == _REQUEST and not _is_request_codec(codec):
                    kind = _INPUT
                param = _Param(p.name, kind, codec, optional, p.default)
                if kind == _REQUEST:
                    if request_param is not None:
                        raise TypeError(
                            f"{self._qualname}: only one parameter may take a whole request "
                            f"('{request_param.name}' and '{p.name}' both do)"
                        )
                    request_param = param
                    continue
            params[p.name] = param
        self._params = params
        self._request_param = request_param
        self._resolve_return(hints.get("return", _NO_DEFAULT))
        self._resolved = True

    def _output_for(self, hint: Any) -> _Output:
        optional, hint = _unwrap_optional(hint)
        if hint is typing.Any:
            return _BY_PAYLOAD
        codec = find_input_codec(type_hint=hint) or find_request_codec(type_hint=hint)
        # A hint no codec knows is encoded by the payload's own type at call time.
        return _Output(hint, codec, optional)

    def _resolve_return(self, hint: Any) -> None:
        if hint is _NO_DEFAULT or hint is typing.Any:
            return
        if hint is InferenceResponse:
            self._response_passthrough = True
            return
        if hint is None or hint is type(None):
            self._outputs = []
            return
        if isinstance(hint, tuple):  # ``-> (np.ndarray, pd.DataFrame)``
            self._outputs = [self._output_for(a) for a in hint]
            return
        optional, inner = _unwrap_optional(hint)
        if typing.get_origin(inner) is tuple:
            args = typing.get_args(inner)
            if len(args) == 2 and args[1] is Ellipsis:
                self._outputs = []
                self._variadic = self._output_for(args[0])
            elif args == ((),):  # Tuple[()]
                self._outputs = []
            else:
                self._outputs = [self._output_for(a) for a in args]
            return
        self._single = self._output_for(hint)

    # -- per request ---------------------------------------------------------------

    def decode(self, request: InferenceRequest) -> Dict[str, Any]:
        if not self._resolved:
            self.resolve()
        params = self._params
        kwargs: Dict[str, Any] = {}
        others: List[RequestInput] = []
        for request_input in request.inputs:
            param = params.get(request_input.name)
            if param is None:
                others.append(request_input)
            elif param.kind == _RAW:
                kwargs[param.name] = request_input
            else:
                kwargs[param.name] = param.codec.decode_input(request_input)
        if others:
            request_param = self._request_param
            if request_param is None:
                raise InputsNotFound(others, params)
            kwargs[request_param.name] = request_param.codec.decode_request(
                InferenceRequest(id=request.id, parameters=request.parameters, inputs=others)
            )
        if len(kwargs) < len(params) + (self._request_param is not None):
            self._fill_missing(kwargs)
        return kwargs

    def _fill_missing(self, kwargs: Dict[str, Any]) -> None:
        missing = []
        every = list(self._params.values())
        if self._request_param is not None:
            every.append(self._request_param)
        for param in every:
            if param.name in kwargs:
                continue
            if param.default is not _NO_DEFAULT:
                continue
            if param.optional:
                kwargs[param.name] = None
            else:
                missing.append(param.name)
        if missing:
            names = ", ".join(f"'{name}'" for name in missing)
            raise InferenceError(f"missing input {names}" if len(missing) == 1 else f"missing inputs {names}")

    def encode(self, model: Any, request: InferenceRequest, result: Any) -> InferenceResponse:
        if isinstance(result, InferenceResponse):
            return result
        if self._response_passthrough:
            raise CodecError(
                f"{self._qualname} is annotated to return an InferenceResponse, "
                f"but returned a {type(result).__name__}"
            )
        names = self._output_names(model, request)
        outputs: List[ResponseOutput] = []
        if self._outputs is None:
            if self._single is _BY_PAYLOAD and isinstance(result, tuple):
                for index, item in enumerate(result):
                    self._encode_one(outputs, _BY_PAYLOAD, item, index, names)
            else:
                self._encode_one(outputs, self._single, result, 0, names)
        else:
            if not isinstance(result, (tuple, list)) or (
                self._variadic is None and len(result) != len(self._outputs)
            ):
                count = "a tuple" if self._variadic is not None else f"a tuple of {len(self._outputs)}"
                raise OutputNotFound(
                    f"{self._qualname} should return {count}, but returned {_describe(result)}"
                )
            for index, item in enumerate(result):
                spec = self._variadic if self._variadic is not None else self._outputs[index]
                self._encode_one(outputs, spec, item, index, names)
        return InferenceResponse(
            model_name=getattr(model, "name", ""),
            model_version=getattr(model, "version", None),
            id=request.id,
            outputs=outputs,
        )

    def _output_names(self, model: Any, request: InferenceRequest) -> List[str]:
        if request.outputs:
            return [o.name for o in request.outputs]
        settings = getattr(model, "settings", None)
        declared = getattr(settings, "outputs", None)
        if declared:
            return [o.name for o in declared]
        return []

    def _encode_one(
        self, outputs: List[ResponseOutput], spec: _Output, payload: Any, index: int, names: List[str]
    ) -> None:
        if payload is None:
            if spec.optional or spec is _BY_PAYLOAD:
                return
            raise CodecError(f"{self._qualname} returned None for output {index}")
        codec = spec.codec
        if codec is not None and not codec.can_encode(payload):
            raise OutputNotFound(
                f"{self._qualname} returned {_describe(payload)} for output {index}, "
                f"but its type hint is {_hint_name(spec.hint)}"
            )
        if codec is None:
            codec = find_input_codec_by_payload(payload) or find_request_codec_by_payload(payload)
            if codec is None:
                raise CodecError(
                    f"{self._qualname}: no codec can encode output {index}, {_describe(payload)}"
                )
        if _is_request_codec(codec):
            outputs.extend(codec.encode_response(model_name="", payload=payload).outputs)
            return
        name = names[index] if index < len(names) else f"{DEFAULT_OUTPUT_PREFIX}{index}"
        outputs.append(codec.encode_output(name=name, payload=payload))


def as_list(hint: Any) -> List[Any]:
    """The items of a return annotation: a ``Tuple[...]`` or tuple of hints, else ``[hint]``."""
    if hint is None:
        return []
    if isinstance(hint, tuple):
        return list(hint)
    if typing.get_origin(hint) is tuple:
        return list(typing.get_args(hint))
    return [hint]


class SignatureCodec(RequestCodec):
    """
    The request codec ``decode_args`` builds from a predict's signature (MLServer's):
    ``decode_request`` gives the keyword arguments, ``encode_response`` encodes a
    return value. An instance codec; the function may or may not take ``self``.
    """

    def __init__(self, predict: Callable[..., Any]) -> None:
        self._signature = _SignatureCodec(predict)
        self._signature.resolve()

    @property
    def _input_codecs(self) -> Dict[str, Any]:
        """Parameter name -> its codec (a request codec for a parameter taking the rest)."""
        sig = self._signature
        codecs = {name: p.codec for name, p in sig._params.items() if p.kind != _RAW}
        if sig._request_param is not None:
            codecs[sig._request_param.name] = sig._request_param.codec
        return codecs

    @_input_codecs.setter
    def _input_codecs(self, codecs: Dict[str, Any]) -> None:
        sig = self._signature
        params: Dict[str, _Param] = {}
        sig._request_param = None
        for name, codec in codecs.items():
            old = sig._params.get(name) or sig._request_param
            optional = old.optional if old is not None else False
            default = old.default if old is not None else _NO_DEFAULT
            if _is_request_codec(codec):
                sig._request_param = _Param(name, _REQUEST, codec, optional, default)
            else:
                params[name] = _Param(name, _INPUT, codec, optional, default)
        sig._params = params

    @property
    def _output_codecs(self) -> List[Any]:
        """The codec of each output, in order."""
        sig = self._signature
        if sig._outputs is None:
            return [sig._single.codec] if sig._single is not _BY_PAYLOAD else []
        return [o.codec for o in sig._outputs]

    @_output_codecs.setter
    def _output_codecs(self, codecs: List[Any]) -> None:
        sig = self._signature
        outputs = [_Output(getattr(c, "TypeHint", None), c, False) for c in codecs]
        sig._variadic = None
        if len(outputs) == 1:
            sig._outputs, sig._single = None, outputs[0]
        else:
            sig._outputs = outputs

    def decode_request(self, request: InferenceRequest) -> Dict[str, Any]:  # type: ignore[override]
        """The predict's keyword arguments, decoded from ``request``."""
        return self._signature.decode(request)

    def encode_response(  # type: ignore[override]
        self, model_name: str, payload: Any, model_version: Optional[str] = None, **kwargs: Any
    ) -> InferenceResponse:
        """``payload`` (a predict's return value) as a response."""
        model = _NamedModel(model_name, model_version)
        return self._signature.encode(model, InferenceRequest(), payload)


class _NamedModel:
    """What ``_SignatureCodec.encode`` reads of a model, for ``SignatureCodec``."""

    settings = None

    def __init__(self, name: str, version: Optional[str]) -> None:
        self.name = name
        self.version = version


def _describe(value: Any) -> str:
    return f"a {type(value).__module__}.{type(value).__qualname__}".replace("builtins.", "")


async def _await_and_encode(
    codec: _SignatureCodec, model: Any, request: InferenceRequest, result: Any
) -> Any:
    return codec.encode(model, request, await result)


def decode_args(predict: Callable[..., Any]) -> Callable[[Any, InferenceRequest], Any]:
    """
    Decorate a runtime's ``predict`` taking typed arguments (one per input, by name)
    so that it takes an ``InferenceRequest`` and returns an ``InferenceResponse``.
    """
    codec = _SignatureCodec(predict, method=True)
    codec.resolve(defer_name_errors=True)

    if inspect.iscoroutinefunction(predict):

        async def predict_async(self: Any, payload: InferenceRequest) -> InferenceResponse:
            result = await predict(self, **codec.decode(payload))
            return codec.encode(self, payload, result)

        wrapper: Callable[..., Any] = predict_async
    else:

        def predict_sync(self: Any, payload: InferenceRequest) -> Any:
            result = predict(self, **codec.decode(payload))
            if hasattr(result, "addCallback"):  # a Deferred
                return result.addCallback(lambda value: codec.encode(self, payload, value))
            if inspect.isawaitable(result):
                return _await_and_encode(codec, self, payload, result)
            return codec.encode(self, payload, result)

        wrapper = predict_sync

    functools.update_wrapper(wrapper, predict, assigned=("__module__", "__name__", "__qualname__", "__doc__"))
    del wrapper.__wrapped__  # type: ignore[attr-defined] # the wrapper's signature is (self, payload)
    wrapper.__annotations__ = {"payload": InferenceRequest, "return": InferenceResponse}
    return wrapper
