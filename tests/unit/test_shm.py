"""
v2d.shm without a server: registering regions, resolving a request's regions, the
references that cross the worker wire without the data, and outputs written to regions.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from v2d import shm
from v2d.errors import InvalidArgument, NotFound
from v2d.types import (
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    RequestOutput,
    ResponseOutput,
)
from v2d.workers import _wire

SIZE = 4096


@pytest.fixture
def key():
    name = f"/v2d-unit-{uuid.uuid4().hex[:12]}"
    path = os.path.join(shm.SHM_DIR, name[1:])
    with open(path, "wb") as f:
        f.truncate(SIZE)
    yield name
    os.unlink(path)


def _region_input(region, byte_size, offset=0, shape=(2, 4), datatype="FP32"):
    params = Parameters(shared_memory_region=region, shared_memory_byte_size=byte_size)
    if offset:
        params.shared_memory_offset = offset
    return RequestInput(
        name="x",
        shape=list(shape),
        datatype=datatype,
        data=shm.from_region("input 'x'", params),
        parameters=params,
    )


def _write(key, offset, array):
    with open(os.path.join(shm.SHM_DIR, key[1:]), "r+b") as f:
        f.seek(offset)
        f.write(array.tobytes())


def test_register_status_unregister(key):
    registry = shm.SharedMemoryRegistry()
    registry.register("a", key, 128, 256)
    assert registry.status() == [{"name": "a", "key": key, "offset": 128, "byte_size": 256}]
    with pytest.raises(InvalidArgument, match="already registered"):
        registry.register("a", key, 0, 8)
    with pytest.raises(InvalidArgument, match="out of the bounds"):
        registry.register("b", key, SIZE - 8, 16)
    with pytest.raises(InvalidArgument, match="does not exist"):
        registry.register("b", "/v2d-unit-missing", 0, 8)
    with pytest.raises(InvalidArgument, match="not a shared-memory key"):
        registry.register("b", "/../etc/passwd", 0, 8)
    with pytest.raises(NotFound):
        registry.status("b")
    registry.unregister("b")  # unknown: no error, as in Triton
    registry.unregister()
    assert registry.status() == []


def test_an_input_is_a_read_only_view_of_the_region(key):
    registry = shm.SharedMemoryRegistry()
    registry.register("r", key, 64, 1024)
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    _write(key, 64 + 16, data)
    request = InferenceRequest(inputs=[_region_input("r", 32, offset=16)])
    lease = registry.resolve(request)
    array = request.inputs[0].data
    assert isinstance(array, shm.RegionArray) and not array.flags.writeable
    np.testing.assert_array_equal(array, data)
    _write(key, 64 + 16, data * 2)  # the same memory, not a copy
    np.testing.assert_array_equal(array, data * 2)
    assert registry.regions["r"].users == 1
    lease.release()
    assert registry.regions["r"].users == 0


@pytest.mark.parametrize(
    "region, byte_size, offset, message",
    [
        ("nope", 32, 0, "input 'x'.parameters.shared_memory_region: no shared-memory region named 'nope'"),
        ("r", 32, 1000, "out of the bounds of region 'r'"),
        ("r", 16, 0, "shared_memory_byte_size is 16, too small for shape [2, 4] of FP32 (32 bytes)"),
    ],
)
def test_bad_input_regions(key, region, byte_size, offset, message):
    registry = shm.SharedMemoryRegistry()
    registry.register("r", key, 0, 1024)
    with pytest.raises(InvalidArgument) as raised:
        registry.resolve(InferenceRequest(inputs=[_region_input(region, byte_size, offset)]))
    assert message in raised.value.message
    assert registry.regions["r"].users == 0


def test_parameters_are_checked_by_the_decoders():
    with pytest.raises(InvalidArgument, match="shared_memory_byte_size is required"):
        shm.from_region("input 'x'", Parameters(shared_memory_region="r"))
    with pytest.raises(InvalidArgument, match="shared_memory_region is required"):
        shm.from_region("input 'x'", Parameters(shared_memory_byte_size=8))
    with pytest.raises(InvalidArgument, match="non-negative integer"):
        shm.from_region("input 'x'", Parameters(shared_memory_region="r", shared_memory_byte_size=-1))
    assert shm.from_region("input 'x'", Parameters(content_type="np")) is None


def test_references_cross_the_wire_without_the_data(key):
    registry = shm.SharedMemoryRegistry()
    registry.register("r", key, 0, SIZE)
    data = np.arange(1000, dtype=np.float32)
    _write(key, 0, data)
    params = Parameters(shared_memory_region="r", shared_memory_byte_size=data.nbytes)
    request = InferenceRequest(
        inputs=[
            RequestInput(
                name="x", shape=[1000], datatype="FP32", data=shm.from_region("x", params), parameters=params
            )
        ],
        outputs=[
            RequestOutput(
                name="y", parameters=Parameters(shared_memory_region="r", shared_memory_byte_size=SIZE - 0)
            )
        ],
    )
    registry.resolve(request)
    head, buffers = _wire.dumps(request)
    assert not buffers and len(head) < 2000  # a reference, not 4000 bytes of data
    received = _wire.loads(head, buffers)
    array = received.inputs[0].data
    assert type(array) is shm.RegionArray
    np.testing.assert_array_equal(array, data)
    # derived arrays travel by value
    head, buffers = _wire.dumps(array[:10] + 1)
    np.testing.assert_array_equal(_wire.loads(head, buffers), data[:10] + 1)
    # the receiver writes the outputs itself
    writer = shm.output_writer(received)
    response = InferenceResponse(
        model_name="m", outputs=[ResponseOutput(name="y", shape=[1000], datatype="FP32", data=array * 3)]
    )
    written = writer(response)
    output = written.outputs[0]
    assert isinstance(output.data, shm.WrittenToRegion)
    assert output.parameters.to_dict() == {
        "shared_memory_region": "r",
        "shared_memory_byte_size": data.nbytes,
    }
    np.testing.assert_array_equal(
        request.inputs[0].data, data * 3
    )  # in place: the output overwrote the input
    head, buffers = _wire.dumps(written)
    assert not buffers and len(head) < 2000
    # written outputs are left alone the second time (the server after a worker)
    assert shm.write_outputs(request, _wire.loads(head, buffers)).outputs[0].data.byte_size == data.nbytes


def test_an_output_too_big_for_its_region(key):
    registry = shm.SharedMemoryRegistry()
    registry.register("r", key, 0, SIZE)
    request = InferenceRequest(
        inputs=[],
        outputs=[
            RequestOutput(
                name="y", parameters=Parameters(shared_memory_region="r", shared_memory_byte_size=8)
            )
        ],
    )
    registry.resolve(request)
    response = InferenceResponse(
        model_name="m",
        outputs=[ResponseOutput(name="y", shape=[4], datatype="FP32", data=np.zeros(4, np.float32))],
    )
    with pytest.raises(
        InvalidArgument, match="shared_memory_byte_size 8 is too small for the output's 16 bytes"
    ):
        shm.write_outputs(request, response)


def test_unregistering_a_region_in_use_unmaps_it_when_the_request_ends(key):
    registry = shm.SharedMemoryRegistry()
    registry.register("r", key, 0, SIZE)
    region = registry.regions["r"]
    lease = registry.resolve(InferenceRequest(inputs=[_region_input("r", 32)]))
    registry.unregister("r")
    assert registry.status() == [] and not region.mapping.closed
    lease.release()
    # closed, or left to the garbage collector while an array still uses it
    registry.register("r", key, 0, SIZE)  # the name is free again
