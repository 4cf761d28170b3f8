"""
The ``inference.GRPCInferenceService`` handlers over a DataPlane.

Handlers are thin: message -> v2d.types (v2d.grpc._convert) -> dataplane -> message.
They run on grpc.aio, on the reactor's own asyncio loop; Deferreds from the dataplane
are awaited through v2d.aio. v2d.errors are answered with their status code (v2d.errors'
table). A call the client cancels cancels its handler's task, and with it the
dataplane's Deferred or stream step it awaits (so the model's work).
"""

from __future__ import annotations

import functools
from typing import Any, AsyncIterator, Callable, Optional

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.message import DecodeError
from twisted.logger import Logger

from v2d.aio import as_future, result_of
from v2d.errors import InvalidArgument, V2DError, grpc_code_name
from v2d.grpc import _shm
from v2d.grpc._convert import (
    SplitInferRequest,
    decode_infer_request,
    encode_infer_response,
    metadata_headers,
    not_a_message,
    response_metadata,
    serialize_infer_response,
    split_infer_request,
)
from v2d.grpc._encoded import WIRE
from v2d.grpc._messages import SERVICE_NAME, pb
from v2d.headers import attach_headers, take_headers
from v2d.interfaces import IDataPlane
from v2d.modelconfig import model_config
from v2d.types import HeaderDict, InferenceRequest

__all__ = ["InferenceServicer", "status_of"]

log = Logger()


def status_of(error: V2DError) -> grpc.StatusCode:
    """The status code of a v2d error (by v2d.errors' table)."""
    return grpc.StatusCode[grpc_code_name(error)]


def _is_abort(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AbortError)


def _unary(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map v2d errors (and unexpected ones) to statuses for a unary handler."""

    @functools.wraps(fn)
    async def handler(self: Any, request: Any, context: Any) -> Any:
        try:
            if isinstance(request, Undecodable):
                raise request.error()
            return await fn(self, request, context)
        except V2DError as e:
            await context.abort(status_of(e), e.message)
        except Exception as e:
            if _is_abort(e):
                raise
            log.failure("unexpected error in {method}", method=fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")

    return handler


class Undecodable:
    """A request message that failed to parse (answered with INVALID_ARGUMENT, not UNKNOWN)."""

    def __init__(self, type_name: str, reason: str) -> None:
        self.type_name = type_name
        self.reason = reason

    def error(self) -> InvalidArgument:
        return not_a_message(self.type_name, self.reason)


def _serializer(cls: Any) -> Callable[[Any], bytes]:
    """Serialize a message; bytes a handler serialized itself pass through."""
    serialize = cls.SerializeToString

    def dump(message: Any) -> bytes:
        if isinstance(message, bytes):
            return message
        return serialize(message)

    return dump


#: Requests at least this big keep their raw contents as views of the wire bytes.
SPLIT_AT = 64 * 1024


class EncodedInferRequest:
    """A small ``ModelInferRequest``, parsed, and the bytes it came as (for models that decode them)."""

    __slots__ = ("message", "data")

    def __init__(self, message: Any, data: bytes) -> None:
        self.message = message
        self.data = data


def _deserializer(cls: Any, unary_infer: bool = False) -> Callable[[bytes], Any]:
    type_name = cls.DESCRIPTOR.full_name
    split = cls.DESCRIPTOR.full_name == "inference.ModelInferRequest"

    def parse(data: bytes) -> Any:
        try:
            if split and len(data) >= SPLIT_AT:
                return split_infer_request(cls, data)
            if unary_infer:
                return EncodedInferRequest(cls.FromString(data), data)
            return cls.FromString(data)
        except DecodeError as e:
            return Undecodable(type_name, str(e))

    return parse


class InferenceServicer:
    """The Open Inference Protocol's gRPC service (with Triton's extensions)."""

    def __init__(self, dataplane: IDataPlane) -> None:
        self.dataplane = dataplane

    # -- health and metadata -------------------------------------------------------

    @_unary
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    @_unary
    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    @_unary
    async def ModelReady(self, request: Any, context: Any) -> Any:
        if not request.name:
            raise InvalidArgument("name is required")
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version or None))

    @_unary
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        meta = self.dataplane.metadata()
        return pb.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=meta.extensions)

    @_unary
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        if not request.name:
            raise InvalidArgument("name is required")
        meta = self.dataplane.model_metadata(request.name, request.version or None)
        message = pb.ModelMetadataResponse(name=meta.name, versions=meta.versions, platform=meta.platform)
        for target, tensors in ((message.inputs, meta.inputs), (message.outputs, meta.outputs)):
            for t in tensors:
                target.add(name=t.name, datatype=t.datatype, shape=t.shape)
        return message

    @_unary
    async def ModelConfig(self, request: Any, context: Any) -> Any:
        if not request.name:
            raise InvalidArgument("name is required")
        config = model_config(self.dataplane.model(request.name, request.version or None))
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig()))

    # -- inference ------------------------------------------------------------------

    @_unary
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        model = None
        if isinstance(request, EncodedInferRequest):
            message = request.message
            if message.model_name:
                model = self.dataplane.admit(message.model_name, message.model_version or None)
            encoded = model is not None and self.dataplane.takes_encoded(model, WIRE)
            if encoded and not _shm.uses_regions(message):
                # the model's worker decodes, predicts and encodes: only bytes pass here
                metadata = metadata_headers(context.invocation_metadata())
                served = self.dataplane.infer_encoded(model, WIRE, request.data, metadata)
                body, extra = await result_of(served)
                if extra:
                    await context.send_initial_metadata(response_metadata(extra))
                return body if isinstance(body, bytes) else bytes(body)
            request = message
        if isinstance(request, SplitInferRequest):
            name, version, payload, raw = decode_infer_request(
                request.message, raw_contents=request.raw_contents
            )
        else:
            name, version, payload, raw = decode_infer_request(request)
        attach_headers(payload, metadata_headers(context.invocation_metadata()))
        response = await result_of(self.dataplane.infer(name, version, payload, model))
        headers = take_headers(response)
        body = serialize_infer_response(response, raw)
        if headers:
            await context.send_initial_metadata(response_metadata(headers))
        return body

    async def ModelStreamInfer(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """
        A stream served by the model's ``predict_stream`` (``DataPlane.infer_stream``):
        the first request names the model; each later one must name the same. Errors
        end the stream with one response carrying ``error_message`` (as Triton's
        clients expect).
        """
        incoming = requests.__aiter__()
        first = await _next(incoming)
        if first is None:
            return
        payloads = _StreamRequests(first, incoming, metadata_headers(context.invocation_metadata()))
        responses: Optional[Any] = None
        try:
            if isinstance(first, Undecodable):
                raise first.error()
            if not first.model_name:
                raise InvalidArgument("model_name is required")
            responses = self.dataplane.infer_stream(payloads.name, payloads.version, payloads.decoded())
            sent_headers = False
            async for response in responses:
                extra = take_headers(response)
                message = encode_infer_response(response, payloads.raw)
                if not sent_headers:
                    sent_headers = True
                    if extra:
                        await context.send_initial_metadata(response_metadata(extra))
                yield pb.ModelStreamInferResponse(infer_response=message)
        except V2DError as e:
            yield pb.ModelStreamInferResponse(error_message=e.message)
        except Exception as e:
            if _is_abort(e):
                raise
            log.failure("streaming a response failed")
            yield pb.ModelStreamInferResponse(error_message=f"internal error: {type(e).__name__}: {e}")
        finally:
            if responses is not None:
                await responses.aclose()

    # -- repository extension ---------------------------------------------------------

    @_unary
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        message = pb.RepositoryIndexResponse()
        for entry in self.dataplane.repository_index(request.ready):
            message.models.add(**entry)
        return message

    @_unary
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        if not request.model_name:
            raise InvalidArgument("model_name is required")
        await as_future(self.dataplane.load_model(request.model_name))
        return pb.RepositoryModelLoadResponse()

    @_unary
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        if not request.model_name:
            raise InvalidArgument("model_name is required")
        await as_future(self.dataplane.unload_model(request.model_name))
        return pb.RepositoryModelUnloadResponse()

    # -- system shared-memory extension (v2d.grpc._shm) ---------------------------------

    @_unary
    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        return _shm.status(self.dataplane.shared_memory, request)

    @_unary
    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        return _shm.register(self.dataplane.shared_memory, request)

    @_unary
    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        return _shm.unregister(self.dataplane.shared_memory, request)

    @_unary
    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        return _shm.cuda_status(request)

    @_unary
    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        return _shm.cuda_register(request)

    @_unary
    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        return _shm.cuda_unregister(request)

    # -- registration -------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler serving every method of the service."""
        service = pb.ModelInferRequest.DESCRIPTOR.file.pool.FindServiceByName(SERVICE_NAME)
        handlers = {}
        for method in service.methods:
            request_cls = _class_of(method.input_type)
            response_cls = _class_of(method.output_type)
            fn = getattr(self, method.name)
            if method.client_streaming and method.server_streaming:
                make = grpc.stream_stream_rpc_method_handler
            else:
                make = grpc.unary_unary_rpc_method_handler
            handlers[method.name] = make(
                fn,
                request_deserializer=_deserializer(request_cls, unary_infer=method.name == "ModelInfer"),
                response_serializer=_serializer(response_cls),
            )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


class _StreamRequests:
    """The requests of one ``ModelStreamInfer`` call, decoded; ``raw``: how the last came."""

    def __init__(self, first: Any, incoming: Any, headers: HeaderDict) -> None:
        self.first = first
        self.incoming = incoming
        self.headers = headers
        self.name = getattr(first, "model_name", "")
        self.version = getattr(first, "model_version", "") or None
        self.raw = True

    async def decoded(self) -> AsyncIterator[InferenceRequest]:
        message = self.first
        index = 0
        while message is not None:
            if isinstance(message, Undecodable):
                raise message.error()
            if message.model_name != self.name or (message.model_version or None) != self.version:
                raise InvalidArgument(
                    f"stream request {index} names model '{message.model_name}'; "
                    f"this stream serves '{self.name}'"
                )
            _, _, payload, self.raw = decode_infer_request(message)
            attach_headers(payload, HeaderDict(self.headers))
            yield payload
            index += 1
            message = await _next(self.incoming)


async def _next(iterator: Any) -> Any:
    """The next item of an async iterator, or None at its end."""
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None


def _class_of(descriptor: Any) -> Any:
    return message_factory.GetMessageClass(descriptor)
