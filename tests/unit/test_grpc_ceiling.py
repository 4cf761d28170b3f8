"""
``benchmarks/grpc_ceiling.py``: the floor's canned answer is the add-one response, its
request frame a valid ``ModelInferRequest``, the handler answers over a real grpc.aio
server (private loop), and CPU time is read from /proc.
"""

from __future__ import annotations

import asyncio
import os

import grpc

from benchmarks import grpc_ceiling
from v2d.grpc._messages import pb


def test_frame_and_canned_response_parse():
    frame = grpc_ceiling.request_frame()
    assert frame[0] == 0 and int.from_bytes(frame[1:5], "big") == len(frame) - 5
    request = pb.ModelInferRequest.FromString(frame[5:])
    assert request.model_name == "add-one" and list(request.inputs[0].shape) == [1, 16]
    response = pb.ModelInferResponse.FromString(grpc_ceiling.canned_response())
    assert response.outputs[0].name == "y" and len(response.raw_output_contents[0]) == 64


def test_floor_handler_answers_model_infer():
    body = grpc_ceiling.canned_response()

    async def main():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc_ceiling.floor_handler(body),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary(f"/{grpc_ceiling.SERVICE}/ModelInfer")
                return await call(grpc_ceiling.request_frame()[5:])
        finally:
            await server.stop(None)

    assert asyncio.run(main()) == body


def test_cpu_seconds_of_this_process():
    assert grpc_ceiling.cpu_seconds(os.getpid()) > 0
