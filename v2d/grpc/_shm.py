"""
Triton's system shared-memory extension over gRPC: the ``SystemSharedMemory{Status,
Register,Unregister}`` messages to v2d.shm's registry and back, and the
``CudaSharedMemory*`` RPCs: registering is refused as not supported, so there is never
a CUDA region (status lists none, unregistering all succeeds, as clients such as
perf_analyzer expect when they clean up). Also tells which ``ModelInferRequest``
uses a region, so that the server, not a worker, decodes it.
"""

from __future__ import annotations

from typing import Any, Optional

from v2d.errors import InvalidArgument, NotFound
from v2d.grpc._messages import pb
from v2d.shm import CUDA_UNSUPPORTED, REGION, SharedMemoryRegistry, require_registry

__all__ = [
    "cuda_register",
    "cuda_status",
    "cuda_unregister",
    "register",
    "status",
    "unregister",
    "uses_regions",
]


def uses_regions(message: Any) -> bool:
    """Whether a ``ModelInferRequest`` names a shared-memory region in an input or an output."""
    for tensor in message.inputs:
        if REGION in tensor.parameters:
            return True
    for tensor in message.outputs:
        if REGION in tensor.parameters:
            return True
    return False


def status(registry: Optional[SharedMemoryRegistry], request: Any) -> Any:
    """A ``SystemSharedMemoryStatusResponse`` for a status request (one region, or all)."""
    message = pb.SystemSharedMemoryStatusResponse()
    for entry in require_registry(registry).status(request.name or None):
        message.regions[entry["name"]].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**entry))
    return message


def register(registry: Optional[SharedMemoryRegistry], request: Any) -> Any:
    """Register the region a ``SystemSharedMemoryRegisterRequest`` describes."""
    if not request.key:
        raise InvalidArgument("key is required")
    require_registry(registry).register(request.name, request.key, request.offset, request.byte_size)
    return pb.SystemSharedMemoryRegisterResponse()


def unregister(registry: Optional[SharedMemoryRegistry], request: Any) -> Any:
    """Unregister one region (``name``) or every region (no name)."""
    require_registry(registry).unregister(request.name or None)
    return pb.SystemSharedMemoryUnregisterResponse()


def cuda_status(request: Any) -> Any:
    """No CUDA region is ever registered: every region's status is empty; a named one is unknown."""
    if request.name:
        raise NotFound(f"no CUDA shared-memory region named '{request.name}': {CUDA_UNSUPPORTED}")
    return pb.CudaSharedMemoryStatusResponse()


def cuda_register(request: Any) -> Any:
    """Refused: CUDA shared memory is not supported."""
    raise NotFound(CUDA_UNSUPPORTED)


def cuda_unregister(request: Any) -> Any:
    """Nothing to unregister (an unknown name is no error, as for system regions)."""
    return pb.CudaSharedMemoryUnregisterResponse()
