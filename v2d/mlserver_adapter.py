"""
Serve a runtime written against the real MLServer: a subclass of ``mlserver.MLModel``.

MLServer's runtime packages (``mlserver_sklearn.SKLearnModel``,
``mlserver_xgboost.XGBoostModel``, ...) and a model folder's own classes that import
the installed ``mlserver`` are served by ``MLServerRuntime``, which looks to the rest
of v2d like any runtime built on ``v2d.MLModel``: it takes and returns ``v2d.types``
messages and raises ``v2d.errors``. Inside, it holds the MLServer model, built with
MLServer's own ``ModelSettings``, and converts at the boundary:

- requests: numeric tensors reach MLServer as a flat numpy array (a view of v2d's
  shaped one; MLServer's codecs accept arrays as they accept lists), BYTES as the same
  list of ``bytes``/``str``; parameters (headers included) and requested outputs as
  MLServer's types;
- responses: each output's data becomes a shaped numpy array of its datatype (BYTES a
  flat list), its parameters v2d's;
- errors: ``mlserver.errors.MLServerError`` (and subclasses) become
  ``v2d.errors.StatusCodeError`` with the same status code, so REST answers with the
  HTTP status MLServer would and gRPC with the code MLServer maps it to.

Around ``predict`` it does what MLServer's dataplane does: a request without an id
gets a fresh one, the response carries the request's id, and the model's name and
version are set in ``mlserver.context`` (which ``mlserver.log`` metrics read).

Imported by worker children (Python 3.9 and up): standard library and numpy at
import; ``mlserver`` is imported only when such a class is served.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import uuid
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple
from urllib.parse import urlparse

import numpy as np

from v2d._coro import Resumed
from v2d.errors import StatusCodeError
from v2d.runtime import MLModel
from v2d.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    MetadataTensor,
    Parameters,
    ResponseOutput,
    numpy_dtype,
)

__all__ = [
    "MLServerRuntime",
    "is_mlserver_model",
    "to_mlserver_request",
    "to_mlserver_settings",
    "to_v2d_error",
    "to_v2d_metadata",
    "to_v2d_response",
]

#: Keys of MLServer's ``ModelParameters`` that v2d's settings keep in ``parameters.extra``.
_PARAMETER_FIELDS = ("format", "inference_pool_gid", "autogenerate_inference_pool_gid")


def is_mlserver_model(cls: Any) -> bool:
    """Whether ``cls`` is a class that subclasses the installed ``mlserver.MLModel``."""
    module = sys.modules.get("mlserver.model")
    base = getattr(module, "MLModel", None)
    return isinstance(cls, type) and isinstance(base, type) and issubclass(cls, base)


class _MLServer:
    """The parts of the installed MLServer the adapter uses, imported once."""

    def __init__(self) -> None:
        from mlserver import errors, settings, types  # type: ignore[import-not-found]

        self.types = types
        self.MLServerError = errors.MLServerError
        self.ModelSettings = settings.ModelSettings
        from mlserver.model import MLModel  # type: ignore[import-not-found]

        self.MLModel = MLModel
        self.context: Optional[Tuple[Any, Any]] = None
        try:
            from mlserver.context import model_name_var, model_version_var  # type: ignore[import-not-found]
        except ImportError:  # an MLServer without model contexts
            pass
        else:
            self.context = (model_name_var, model_version_var)


_api: Optional[_MLServer] = None


def _mlserver() -> _MLServer:
    global _api
    if _api is None:
        _api = _MLServer()
    return _api


# -- settings ------------------------------------------------------------------


def _resolve_uri(uri: Optional[str], folder: Optional[str]) -> Optional[str]:
    """A relative file uri made absolute against the model folder; other uris as they are."""
    if not uri or not folder:
        return uri
    parsed = urlparse(uri, scheme="file")
    if parsed.scheme != "file" or os.path.isabs(parsed.path):
        return uri
    return os.path.normpath(os.path.join(folder, parsed.path))


def _tensor_dict(tensor: MetadataTensor) -> Dict[str, Any]:
    values: Dict[str, Any] = {
        "name": tensor.name,
        "datatype": _datatype(tensor.datatype),
        "shape": list(tensor.shape),
    }
    if tensor.parameters is not None:
        values["parameters"] = tensor.parameters.to_dict()
    return values


def to_mlserver_settings(settings: Any) -> Any:
    """MLServer's ``ModelSettings`` for v2d's ``ModelSettings`` of the same model."""
    api = _mlserver()
    params = settings.parameters
    extra = dict(params.extra or {})
    parameters: Dict[str, Any] = {
        "uri": _resolve_uri(params.uri, settings.folder),
        "version": params.version,
        "environment_tarball": params.environment_tarball,
        "environment_path": params.environment_path,
        "content_type": params.content_type,
        "format": getattr(params, "format", None),
    }
    for key in _PARAMETER_FIELDS:
        if key in extra:
            parameters[key] = extra.pop(key)
    parameters["extra"] = extra
    values: Dict[str, Any] = {
        "name": settings.name,
        "implementation": getattr(settings, "implementation_", settings.implementation),
        "platform": settings.platform,
        "versions": list(settings.versions),
        "inputs": [_tensor_dict(t) for t in settings.inputs],
        "outputs": [_tensor_dict(t) for t in settings.outputs],
        "max_batch_size": settings.max_batch_size,
        "max_batch_time": settings.max_batch_time,
        "parameters": {k: v for k, v in parameters.items() if v is not None},
    }
    if settings.folder:
        # what MLServer's get_model_uri resolves relative paths against
        values["_source"] = os.path.join(os.path.abspath(settings.folder), "model-settings.json")
    return api.ModelSettings.model_validate(values)


# -- messages --------------------------------------------------------------------


def _to_mlserver_parameters(parameters: Optional[Parameters], api: _MLServer) -> Any:
    if parameters is None:
        return None
    values = parameters.to_dict()
    headers = values.get("headers")
    if headers is not None:
        values["headers"] = dict(headers)
    return api.types.Parameters.model_construct(**values)


def _to_v2d_parameters(parameters: Any) -> Optional[Parameters]:
    if parameters is None:
        return None
    if isinstance(parameters, dict):  # a message built without validation
        return Parameters(**parameters)
    return Parameters(**parameters.model_dump())


def _flat(data: Any, datatype: str) -> Any:
    if isinstance(data, np.ndarray):
        if datatype == "BYTES":  # MLServer's codecs read BYTES as a list
            return data.reshape(-1).tolist()
        return data.reshape(-1)
    return data


def to_mlserver_request(request: InferenceRequest) -> Any:
    """MLServer's ``InferenceRequest`` for a v2d one (tensor data is not copied)."""
    api = _mlserver()
    t = api.types
    inputs = []
    for i in request.inputs:
        datatype = _datatype(i.datatype)
        inputs.append(
            t.RequestInput.model_construct(
                name=i.name,
                shape=list(i.shape),
                datatype=datatype,
                data=t.TensorData.model_construct(root=_flat(i.data, datatype)),
                parameters=_to_mlserver_parameters(i.parameters, api),
            )
        )
    outputs = None
    if request.outputs is not None:
        outputs = [
            t.RequestOutput.model_construct(
                name=o.name, parameters=_to_mlserver_parameters(o.parameters, api)
            )
            for o in request.outputs
        ]
    return t.InferenceRequest.model_construct(
        id=request.id,
        parameters=_to_mlserver_parameters(request.parameters, api),
        inputs=inputs,
        outputs=outputs,
    )


def _datatype(value: Any) -> str:
    return str(getattr(value, "value", value))


def _bytes_items(root: Any, count: int) -> List[Any]:
    items: List[Any] = []
    for item in root:
        if isinstance(item, (list, tuple)):
            items.extend(_bytes_items(item, -1))
        else:
            items.append(item)
    if count > 1 and len(items) == 1 and isinstance(items[0], bytes) and len(items[0]) % count == 0:
        # MLServer's NumpyCodec sends a fixed-width bytes array as one buffer
        blob, size = items[0], len(items[0]) // count
        items = [blob[i * size : (i + 1) * size].rstrip(b"\x00") for i in range(count)]
    return items


def _to_v2d_data(name: str, data: Any, datatype: str, shape: List[int]) -> Any:
    root = getattr(data, "root", data)
    count = 1
    for dim in shape:
        count *= dim
    if datatype == "BYTES":
        if isinstance(root, np.ndarray):
            root = root.tolist()
        return _bytes_items(root, count)
    try:
        array = np.asarray(root, dtype=numpy_dtype(datatype))
        return array.reshape(shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise StatusCodeError(
            f"output '{name}' ({datatype}, shape {shape}) cannot be read as its datatype and shape: {exc}",
            500,
        ) from None


def to_v2d_response(response: Any) -> InferenceResponse:
    """v2d's ``InferenceResponse`` for an MLServer one."""
    outputs = []
    for o in response.outputs:
        datatype = _datatype(o.datatype)
        shape = list(o.shape)
        outputs.append(
            ResponseOutput(
                name=o.name,
                shape=shape,
                datatype=datatype,
                data=_to_v2d_data(o.name, o.data, datatype, shape),
                parameters=_to_v2d_parameters(o.parameters),
            )
        )
    return InferenceResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
        parameters=_to_v2d_parameters(response.parameters),
        outputs=outputs,
    )


def _to_v2d_tensors(tensors: Any) -> List[MetadataTensor]:
    return [
        MetadataTensor(
            name=t.name,
            datatype=_datatype(t.datatype),
            shape=list(t.shape),
            parameters=_to_v2d_parameters(t.parameters),
        )
        for t in tensors or ()
    ]


def to_v2d_metadata(metadata: Any) -> MetadataModelResponse:
    """v2d's ``MetadataModelResponse`` for an MLServer one."""
    return MetadataModelResponse(
        name=metadata.name,
        platform=metadata.platform or "",
        versions=list(metadata.versions or ()),
        inputs=_to_v2d_tensors(metadata.inputs),
        outputs=_to_v2d_tensors(metadata.outputs),
        parameters=_to_v2d_parameters(metadata.parameters),
    )


def to_v2d_error(exc: BaseException) -> BaseException:
    """The v2d error for an exception an MLServer runtime raised (others as they are)."""
    api = _mlserver()
    if isinstance(exc, api.MLServerError):
        status = getattr(exc, "status_code", None)
        return StatusCodeError(str(exc), status if isinstance(status, int) else 500)
    return exc


# -- the runtime -------------------------------------------------------------------


async def _resolve(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


_AGAIN = object()


class MLServerRuntime(MLModel):
    """
    A subclass of the real ``mlserver.MLModel``, served as a v2d runtime.

    ``model`` is the MLServer model, built with MLServer's ``ModelSettings``;
    ``settings`` are v2d's.
    """

    def __init__(self, cls: Any, settings: Any) -> None:
        self._api = _mlserver()
        self.model = cls(to_mlserver_settings(settings))
        self._metadata: Optional[MetadataModelResponse] = None
        #: Whether ``predict`` must run in a task from its first step (see ``predict``).
        self._needs_task = False
        super().__init__(settings)

    @property
    def ready(self) -> bool:
        return bool(getattr(self.model, "ready", False))

    @ready.setter
    def ready(self, value: bool) -> None:
        self.model.ready = value

    @property
    def custom_handler_target(self) -> Any:
        """Where the ``@custom_handler`` methods are: the MLServer model (v2d.handlers)."""
        return self.model

    @property
    def streaming(self) -> bool:
        """Whether the MLServer model overrides ``predict_stream``."""
        method = getattr(type(self.model), "predict_stream", None)
        return method is not None and method is not self._api.MLModel.predict_stream

    def _enter_context(self) -> Any:
        """Set MLServer's model context; returns the tokens that undo it."""
        if self._api.context is None:
            return None
        name_var, version_var = self._api.context
        return name_var.set(self.model.settings.name), version_var.set(self.model.settings.version or "")

    def _leave_context(self, tokens: Any) -> None:
        if tokens is not None and self._api.context is not None:
            name_var, version_var = self._api.context
            name_var.reset(tokens[0])
            version_var.reset(tokens[1])

    async def load(self) -> bool:
        """MLServer's ``load``; the metadata is read once it is done."""
        self._enter_context()
        try:
            ready = await _resolve(self.model.load())
            metadata = await _resolve(self.model.metadata())
        except self._api.MLServerError as exc:
            raise to_v2d_error(exc) from exc
        self._metadata = to_v2d_metadata(metadata)
        return ready if isinstance(ready, bool) else True

    async def unload(self) -> Any:
        """MLServer's ``unload``."""
        try:
            return await _resolve(self.model.unload())
        except self._api.MLServerError as exc:
            raise to_v2d_error(exc) from exc

    def predict(self, payload: InferenceRequest) -> Any:
        """
        One request, served by the MLServer model.

        Its ``predict`` is a coroutine, run at once up to its first wait: one that
        finishes without waiting on anything (as the runtime packages' do) is answered
        there, with no task (a task per request costs the worker path over a third of
        its throughput); one that waits goes on as a task of its own. A coroutine that
        needs to run inside a task from its first step (``asyncio.timeout``,
        ``TaskGroup``, ``wait_for`` on Python 3.12) fails that step with RuntimeError:
        it is then called again as a task, and so is every later request to the model.
        """
        request = to_mlserver_request(payload)
        if request.id is None:
            request.id = str(uuid.uuid4())
        if self._needs_task:
            return self._finish(self.model.predict(request), request.id)
        tokens = self._enter_context()
        try:
            pending = self.model.predict(request)
            if not inspect.iscoroutine(pending):
                if inspect.isawaitable(pending):
                    return self._finish(pending, request.id)
                return self._answer(pending, request.id)
            try:
                waiting = pending.send(None)
            except StopIteration as done:
                return self._answer(done.value, request.id)
            except RuntimeError:
                if asyncio.current_task() is not None:
                    raise
                self._needs_task = True
                waiting = _AGAIN
        except self._api.MLServerError as exc:
            raise to_v2d_error(exc) from exc
        finally:
            self._leave_context(tokens)
        if waiting is _AGAIN:
            return self._finish(self.model.predict(request), request.id)
        return self._finish(Resumed(pending, waiting), request.id)

    async def _finish(self, pending: Any, request_id: str) -> InferenceResponse:
        self._enter_context()  # in the task's own context
        try:
            response = await pending
        except self._api.MLServerError as exc:
            raise to_v2d_error(exc) from exc
        return self._answer(response, request_id)

    def _answer(self, response: Any, request_id: str) -> InferenceResponse:
        response.id = request_id  # as MLServer's dataplane does
        return to_v2d_response(response)

    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest]
    ) -> AsyncIterator[InferenceResponse]:
        """A stream of requests, served by the MLServer model's ``predict_stream``."""
        ids: List[str] = []

        async def requests() -> AsyncIterator[Any]:
            async for payload in payloads:
                request = to_mlserver_request(payload)
                if not ids:
                    ids.append(request.id or str(uuid.uuid4()))
                request.id = ids[0]  # MLServer gives a stream the id of its first request
                yield request

        self._enter_context()
        try:
            async for response in self.model.predict_stream(requests()):
                response.id = ids[0] if ids else response.id
                yield to_v2d_response(response)
        except self._api.MLServerError as exc:
            raise to_v2d_error(exc) from exc

    def metadata(self) -> MetadataModelResponse:
        """The MLServer model's metadata (read when it loaded), as v2d's."""
        if self._metadata is not None:
            return self._metadata
        return super().metadata()
