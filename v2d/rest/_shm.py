"""
Triton's system shared-memory extension over REST (``v2/systemsharedmemory/...``).

``GET v2/systemsharedmemory[/region/NAME]/status`` answers a JSON array of
``{"name", "key", "offset", "byte_size"}``; ``POST v2/systemsharedmemory/region/NAME/register``
takes ``{"key", "offset", "byte_size"}``; ``POST v2/systemsharedmemory[/region/NAME]/unregister``
unregisters one region or all. Registering CUDA shared memory
(``v2/cudasharedmemory/...``) is refused as not supported, so there is never a CUDA
region: its status lists none, and unregistering succeeds. The regions themselves are v2d.shm's.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from v2d.errors import InvalidArgument, NotFound
from v2d.shm import CUDA_UNSUPPORTED, SharedMemoryRegistry, require_registry

__all__ = [
    "cuda_answer",
    "region_output_entry",
    "register_region",
    "region_status",
    "unregister_region",
]


def region_output_entry(output: Any) -> Dict[str, Any]:
    """
    The JSON form of an output written to a region: name, shape and datatype, no data
    and no parameters, as Triton answers (its C++ client, perf_analyzer's, reads any
    output parameters as the binary extension's and fails without ``binary_data_size``).
    gRPC responses carry the region's parameters.
    """
    return {"name": output.name, "shape": list(output.shape), "datatype": output.datatype}


def register_region(registry: Optional[SharedMemoryRegistry], name: str, doc: Dict[str, Any]) -> None:
    """Register region ``name`` from a parsed register body (``key``, ``offset``, ``byte_size``)."""
    key = doc.get("key")
    if key is None:
        raise InvalidArgument("key is required")
    if "byte_size" not in doc:
        raise InvalidArgument("byte_size is required")
    require_registry(registry).register(name, key, doc.get("offset", 0), doc["byte_size"])


def region_status(registry: Optional[SharedMemoryRegistry], name: Optional[str]) -> List[Dict[str, Any]]:
    """The status array of region ``name``, or of every region."""
    return require_registry(registry).status(name)


def unregister_region(registry: Optional[SharedMemoryRegistry], name: Optional[str]) -> None:
    """Unregister region ``name``, or every region."""
    require_registry(registry).unregister(name)


def cuda_answer(method: bytes, path: bytes, name: Optional[str]) -> Any:
    """The answer to a CUDA shared-memory request: an empty status or unregister, else an error."""
    if path.endswith(b"/register"):
        raise InvalidArgument(CUDA_UNSUPPORTED)
    if path.endswith(b"/unregister"):
        return {}
    if name:
        raise NotFound(f"no CUDA shared-memory region named '{name}': {CUDA_UNSUPPORTED}")
    return []
