"""
Start MLServer 1.7.1 as ``mlserver start FOLDER`` does, with one addition: the gRPC
``inference.GRPCInferenceService/ModelConfig`` method, which perf_analyzer calls before
it sends a request and MLServer does not have.

Run with the peer's own interpreter (its venv); settings come from the environment
(``MLSERVER_HTTP_PORT``, ``MLSERVER_GRPC_PORT``, ``MLSERVER_PARALLEL_WORKERS``,
``MLSERVER_DEBUG``, ...) and FOLDER's settings.json, as for ``mlserver start``::

    python serve.py MODELS_FOLDER

The REST side of the configuration is the runtimes' own ``custom_handler``
(``benchmarks/models/mlserver_runtimes.py``). Nothing else of MLServer is changed.

The ModelConfig messages are Triton's (``ModelConfigRequest``/``ModelConfigResponse``
of its grpc_service.proto). Their generated classes cannot be imported next to
MLServer's, which define other messages under the same ``inference`` package, so the
few fields needed are read and written here in protobuf's wire format.
"""

import asyncio
import sys
from typing import Any, Dict, List, Optional, Tuple

import grpc
from mlserver.cli.serve import load_settings
from mlserver.grpc.server import GRPCServer
from mlserver.logging import configure_logger
from mlserver.server import MLServer
from mlserver.utils import install_uvloop_event_loop

SERVICE = "inference.GRPCInferenceService"

#: Triton's DataType enum (model_config.proto).
DATA_TYPES = {
    "BOOL": 1, "UINT8": 2, "UINT16": 3, "UINT32": 4, "UINT64": 5, "INT8": 6, "INT16": 7,
    "INT32": 8, "INT64": 9, "FP16": 10, "FP32": 11, "FP64": 12, "BYTES": 13, "BF16": 14,
}  # fmt: skip


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s are ten bytes, as protobuf writes them
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, messages, packed repeated scalars)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def _read_varint(data: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def parse_model_config_request(data: bytes) -> Dict[int, str]:
    """ModelConfigRequest: {1: name, 2: version} (other fields skipped)."""
    fields: Dict[int, str] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 2:
            size, pos = _read_varint(data, pos)
            fields[number] = data[pos : pos + size].decode()
            pos += size
        elif wire == 0:
            _, pos = _read_varint(data, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return fields


def _tensor_config(tensor: Any, dims_field: int) -> bytes:
    dims = b"".join(_varint(int(d)) for d in tensor.shape)
    return (
        _field(1, tensor.name.encode())
        + _int_field(2, DATA_TYPES.get(tensor.datatype, 0))
        + _field(dims_field, dims)
    )


def model_config_response(name: str, inputs: List[Any], outputs: List[Any]) -> bytes:
    """ModelConfigResponse{config: ModelConfig{name, max_batch_size 0, input, output}}."""
    config = _field(1, name.encode())
    config += b"".join(_field(5, _tensor_config(t, 4)) for t in inputs)  # ModelInput.dims = 4
    config += b"".join(_field(6, _tensor_config(t, 3)) for t in outputs)  # ModelOutput.dims = 3
    return _field(1, config)


class ModelConfigGRPCServer(GRPCServer):
    """MLServer's gRPC server plus a ModelConfig method answered from model metadata."""

    def _create_server(self) -> Any:
        server = super()._create_server()
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ModelConfig": grpc.unary_unary_rpc_method_handler(
                    self._model_config,
                    request_deserializer=parse_model_config_request,
                    response_serializer=bytes,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        return server

    async def _model_config(self, request: Dict[int, str], context: Any) -> bytes:
        try:
            meta = await self._data_plane.model_metadata(request.get(1, ""), request.get(2) or None)
        except Exception as e:  # the model is unknown or not ready
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        return model_config_response(meta.name, meta.inputs or [], meta.outputs or [])


class BenchmarkMLServer(MLServer):
    """MLServer whose gRPC server has the ModelConfig method."""

    def _create_servers(self) -> None:
        super()._create_servers()
        self._grpc_server = ModelConfigGRPCServer(
            self._settings, self._data_plane, self._model_repository_handlers
        )


async def serve(folder: str) -> None:
    settings, models_settings = await load_settings(folder)
    server = BenchmarkMLServer(settings)
    await server.start(models_settings)


def main(argv: Optional[list] = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: serve.py MODELS_FOLDER")
    configure_logger()
    install_uvloop_event_loop()
    asyncio.run(serve(args[0]))


if __name__ == "__main__":
    main()
