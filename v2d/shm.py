"""
Triton's system shared-memory extension: registered regions, and tensors read from and
written to them.

A client creates a POSIX shared-memory object (``/dev/shm/KEY``), registers a part of
it under a name, and names that region in an input's or a requested output's
parameters (``shared_memory_region``, ``shared_memory_byte_size``, optional
``shared_memory_offset``). An input from a region is a read-only numpy view of the
mapping (no copy); an output asked for in a region is written there, and the response
carries the region's parameters and no data.

Worker children get a reference, never the bytes: an input array (``RegionArray``)
and an output's target (``RegionSlice``) pickle as (key, offset, size, dtype, shape),
and unpickling maps the region in the child (``mapped``), which also writes the
outputs asked for into their regions itself (``output_writer``).

Unregistering a region that requests are using removes its name at once and unmaps it
when the last of those requests ends (as Triton does).

Child-safe: standard library, numpy and v2d's child-safe modules only.
"""

from __future__ import annotations

import mmap
import os
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from v2d.errors import InvalidArgument, NotFound, Unavailable
from v2d.tensors import bytes_elements, flat_output, infer_datatype, output_array, pack_bytes, shape_size
from v2d.types import DATATYPES, Parameters

__all__ = [
    "BYTE_SIZE",
    "CUDA_UNSUPPORTED",
    "EXTENSION",
    "OFFSET",
    "REGION",
    "FromRegion",
    "RegionArray",
    "RegionSlice",
    "SharedMemoryRegistry",
    "WrittenToRegion",
    "from_region",
    "key_path",
    "mapped",
    "output_writer",
    "require_registry",
    "write_outputs",
]

#: The name servers list in their metadata's extensions.
EXTENSION = "system_shared_memory"
#: The tensor parameters of the extension.
REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"
#: Where POSIX shared-memory objects live (``shm_open`` names).
SHM_DIR = "/dev/shm"
#: A requested output's target, set by ``SharedMemoryRegistry.resolve``.
TARGET_ATTRIBUTE = "_v2d_region"
#: Keys a process keeps mapped when it maps them by key (worker children).
CACHED_KEYS = 16
#: The answer to a CUDA shared-memory registration, on either transport.
CUDA_UNSUPPORTED = "CUDA shared memory is not supported by this server (system shared memory is)"


def key_path(key: str, field: str = "key") -> str:
    """The file of a shared-memory key (``/name`` or ``name``); InvalidArgument for anything else."""
    if not isinstance(key, str):
        raise InvalidArgument(f"{field} must be a string")
    name = key[1:] if key.startswith("/") else key
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise InvalidArgument(
            f"{field}: {key!r} is not a shared-memory key "
            "(expected a name such as '/input0', as shm_open takes)"
        )
    return os.path.join(SHM_DIR, name)


def _map_key(key: str, field: str) -> Tuple[mmap.mmap, Tuple[int, int, int]]:
    """The whole object of ``key`` mapped read-write, and its identity (device, inode, size)."""
    path = key_path(key, field)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        raise InvalidArgument(f"{field}: shared-memory key {key!r} does not exist (no {path})") from None
    except OSError as e:
        raise InvalidArgument(f"{field}: cannot open shared-memory key {key!r}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_size == 0:
            raise InvalidArgument(f"{field}: shared-memory key {key!r} has size 0")
        return mmap.mmap(fd, st.st_size), (st.st_dev, st.st_ino, st.st_size)
    finally:
        os.close(fd)


_MAPPED: "OrderedDict[str, Tuple[Tuple[int, int, int], mmap.mmap]]" = OrderedDict()


def mapped(key: str) -> mmap.mmap:
    """
    The object of ``key`` mapped in this process, kept for the next call (the last
    ``CACHED_KEYS`` keys; a key whose object was replaced is mapped afresh).
    """
    path = key_path(key)
    cached = _MAPPED.get(key)
    if cached is not None:
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino, st.st_size) == cached[0]:
            _MAPPED.move_to_end(key)
            return cached[1]
    mapping, identity = _map_key(key, "key")
    _MAPPED[key] = (identity, mapping)
    _MAPPED.move_to_end(key)
    while len(_MAPPED) > CACHED_KEYS:
        _MAPPED.popitem(last=False)  # unmapped once no array uses it
    return mapping


def _close(mapping: mmap.mmap) -> None:
    try:
        mapping.close()
    except BufferError:
        pass  # an array still uses it: unmapped when the last one is freed


class RegionSlice:
    """
    Bytes of a shared-memory object: ``byte_size`` bytes at ``offset`` of ``key``'s
    object (offsets from its start), part of region ``region``. Pickles as that
    reference; the receiving process maps the key itself.
    """

    __slots__ = ("region", "key", "offset", "byte_size", "_view")

    def __init__(self, region: str, key: str, offset: int, byte_size: int, view: Optional[memoryview] = None):
        self.region = region
        self.key = key
        self.offset = offset
        self.byte_size = byte_size
        self._view = view

    def __reduce__(self) -> Any:
        return (RegionSlice, (self.region, self.key, self.offset, self.byte_size))

    def __repr__(self) -> str:
        return f"RegionSlice({self.region!r}, {self.key!r}, {self.offset}, {self.byte_size})"

    def view(self) -> memoryview:
        """The bytes, writable (mapping the key in this process the first time if needed)."""
        if self._view is None:
            mapping = mapped(self.key)
            end = self.offset + self.byte_size
            if end > len(mapping):
                raise InvalidArgument(
                    f"region '{self.region}': key {self.key!r} has {len(mapping)} bytes, "
                    f"fewer than the {end} the request uses"
                )
            self._view = memoryview(mapping)[self.offset : end]
        return self._view


class RegionArray(np.ndarray):
    """
    A numpy array over a region's bytes. Pickles as a reference to them (a worker child
    maps the region itself); arrays derived from it (views, results) are plain values.
    """

    region_slice: Optional[RegionSlice] = None

    def __array_finalize__(self, obj: Any) -> None:
        self.region_slice = None

    def __reduce_ex__(self, protocol: Any) -> Any:
        ref = self.region_slice
        if ref is None:
            return (np.asarray, (np.asarray(self),))
        return (_open_array, (ref, self.dtype.str, tuple(self.shape)))


def _open_array(ref: RegionSlice, dtype: str, shape: Tuple[int, ...]) -> RegionArray:
    return _array(ref, np.dtype(dtype), list(shape))


def _array(ref: RegionSlice, dtype: Any, shape: List[int]) -> RegionArray:
    array = np.frombuffer(ref.view(), dtype=dtype).reshape(shape).view(RegionArray)
    array.region_slice = ref
    array.flags.writeable = False
    return array


class FromRegion:
    """An input's data still to be read from a region (what the transports decode)."""

    __slots__ = ("region", "offset", "byte_size", "field")

    def __init__(self, region: str, offset: int, byte_size: int, field: str) -> None:
        self.region = region
        self.offset = offset
        self.byte_size = byte_size
        self.field = field


class WrittenToRegion:
    """An output's data, written to a region: the response carries its parameters, not data."""

    __slots__ = ("region", "byte_size")

    def __init__(self, region: str, byte_size: int) -> None:
        self.region = region
        self.byte_size = byte_size

    def __reduce__(self) -> Any:
        return (WrittenToRegion, (self.region, self.byte_size))


def _int_parameter(params: Any, name: str, field: str, default: Optional[int] = None) -> int:
    value = params.get(name)
    if value is None:
        if default is None:
            raise InvalidArgument(f"{field}.parameters.{name} is required with {REGION}")
        return default
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"{field}.parameters.{name} must be a non-negative integer")
    return int(value)


def _region_parameters(params: Any, field: str) -> Tuple[str, int, int]:
    """(region, offset, byte size) from a tensor's parameters, checked."""
    region = params.get(REGION)
    if not isinstance(region, str) or not region:
        raise InvalidArgument(f"{field}.parameters.{REGION} must be a region's name")
    byte_size = _int_parameter(params, BYTE_SIZE, field)
    offset = _int_parameter(params, OFFSET, field, default=0)
    return region, offset, byte_size


def from_region(field: str, params: Any) -> Optional[FromRegion]:
    """
    The data of an input whose ``params`` name a region (None if they do not), for the
    transports' decoders; checks the parameters, not the region.
    """
    if params is None:
        return None
    if params.get(REGION) is None:
        if params.get(BYTE_SIZE) is not None or params.get(OFFSET) is not None:
            raise InvalidArgument(f"{field}.parameters.{REGION} is required with {BYTE_SIZE}")
        return None
    if params.get("binary_data_size") is not None:
        raise InvalidArgument(f"{field}: binary_data_size and {REGION} cannot both be given")
    region, offset, byte_size = _region_parameters(params, field)
    return FromRegion(region, offset, byte_size, field)


# -- outputs ------------------------------------------------------------------------


def _output_bytes(output: Any, field: str) -> Tuple[str, List[int], Any]:
    datatype = output.datatype or infer_datatype(output.data)
    data = output.data
    shape = output.shape
    if shape is None:
        shape = list(np.shape(data)) if isinstance(data, np.ndarray) else [len(data)]
    try:
        if DATATYPES.get(datatype) is None:
            flat, _ = flat_output(datatype, data, field)
            return datatype, list(shape), pack_bytes(flat)
        return datatype, list(shape), memoryview(output_array(datatype, data, field).ravel()).cast("B")  # type: ignore[arg-type]
    except ValueError as e:
        raise InvalidArgument(str(e)) from None


def write_outputs(request: Any, response: Any) -> Any:
    """
    Write the outputs of ``response`` that ``request`` asked for in regions (resolved
    by ``SharedMemoryRegistry.resolve``) to them; each becomes a ``WrittenToRegion``
    with the region's parameters. Outputs already written are left alone.
    """
    targets: Dict[str, RegionSlice] = {}
    for requested in getattr(request, "outputs", None) or ():
        target = getattr(requested, TARGET_ATTRIBUTE, None)
        if target is not None:
            targets[requested.name] = target
    outputs = getattr(response, "outputs", None)
    if not targets or not isinstance(outputs, list):
        return response
    for output in outputs:
        target = targets.get(getattr(output, "name", ""))
        if target is None or isinstance(output.data, WrittenToRegion):
            continue
        field = f"output '{output.name}'"
        datatype, shape, raw = _output_bytes(output, field)
        size = len(raw)
        if size > target.byte_size:
            raise InvalidArgument(
                f"{field}: {BYTE_SIZE} {target.byte_size} is too small for the output's {size} bytes "
                f"(shape {shape}, {datatype})"
            )
        target.view()[:size] = raw
        output.datatype = datatype
        output.shape = shape
        output.data = WrittenToRegion(target.region, size)
        params = output.parameters.to_dict() if output.parameters is not None else {}
        params[REGION] = target.region
        params[BYTE_SIZE] = size
        output.parameters = Parameters(**params)
    return response


def output_writer(request: Any) -> Optional[Callable[[Any], Any]]:
    """A function writing a response's outputs to the regions ``request`` asked (None if it asked none)."""
    for requested in getattr(request, "outputs", None) or ():
        if getattr(requested, TARGET_ATTRIBUTE, None) is not None:
            return lambda response: write_outputs(request, response)
    return None


# -- the server's registry ------------------------------------------------------------


class Region:
    """A registered region: ``byte_size`` bytes at ``offset`` of ``key``'s object, mapped."""

    __slots__ = ("name", "key", "offset", "byte_size", "mapping", "users", "unregistered")

    def __init__(self, name: str, key: str, offset: int, byte_size: int, mapping: mmap.mmap) -> None:
        self.name = name
        self.key = key
        self.offset = offset
        self.byte_size = byte_size
        self.mapping = mapping
        self.users = 0
        self.unregistered = False

    def status(self) -> Dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def slice(self, offset: int, byte_size: int, field: str) -> RegionSlice:
        """The region's bytes at ``offset`` (from the region's start); InvalidArgument if out of bounds."""
        if offset + byte_size > self.byte_size:
            raise InvalidArgument(
                f"{field}: {OFFSET} {offset} + {BYTE_SIZE} {byte_size} is out of the bounds of region "
                f"'{self.name}' ({self.byte_size} bytes)"
            )
        start = self.offset + offset
        return RegionSlice(
            self.name, self.key, start, byte_size, memoryview(self.mapping)[start : start + byte_size]
        )


class Lease:
    """The regions one request uses; ``release`` when it ends (passes its argument through)."""

    __slots__ = ("regions",)

    def __init__(self, regions: List[Region]) -> None:
        self.regions = regions

    def release(self, result: Any = None) -> Any:
        regions, self.regions = self.regions, []
        for region in regions:
            region.users -= 1
            if region.unregistered and region.users == 0:
                _close(region.mapping)
        return result


class SharedMemoryRegistry:
    """The system shared-memory regions clients registered, by name."""

    def __init__(self) -> None:
        self.regions: Dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map ``byte_size`` bytes at ``offset`` of ``key``'s object as region ``name``."""
        if not isinstance(name, str) or not name:
            raise InvalidArgument("name: a region needs a name")
        if name in self.regions:
            raise InvalidArgument(f"name: a shared-memory region named '{name}' is already registered")
        for value, field in ((offset, "offset"), (byte_size, "byte_size")):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArgument(f"{field} must be a non-negative integer")
        if byte_size == 0:
            raise InvalidArgument("byte_size must be greater than 0")
        mapping, (_, _, size) = _map_key(key, "key")
        if offset + byte_size > size:
            _close(mapping)
            raise InvalidArgument(
                f"offset {offset} + byte_size {byte_size} is out of the bounds of shared-memory key "
                f"{key!r} ({size} bytes)"
            )
        self.regions[name] = Region(name, key, offset, byte_size, mapping)

    def unregister(self, name: Optional[str] = None) -> None:
        """
        Unregister region ``name``, or every region if None or empty (an unknown name is
        no error, as in Triton). A region in use is unmapped when its requests end.
        """
        names = [name] if name else list(self.regions)
        for each in names:
            region = self.regions.pop(each, None)
            if region is None:
                continue
            region.unregistered = True
            if region.users == 0:
                _close(region.mapping)

    def status(self, name: Optional[str] = None) -> List[Dict[str, Any]]:
        """The status of region ``name``, or of every region (NotFound for an unknown name)."""
        if not name:
            return [region.status() for region in self.regions.values()]
        region = self.regions.get(name)
        if region is None:
            raise NotFound(f"no system shared-memory region named '{name}' is registered")
        return [region.status()]

    def _region(self, name: str, field: str) -> Region:
        region = self.regions.get(name)
        if region is None:
            raise InvalidArgument(
                f"{field}.parameters.{REGION}: no shared-memory region named '{name}' is registered"
            )
        return region

    def resolve(self, request: Any) -> Optional[Lease]:
        """
        Read the inputs of ``request`` that name regions (``FromRegion`` data) and attach
        their targets to the outputs asked for in regions; the lease of the regions used,
        or None if the request uses none. InvalidArgument naming the field otherwise.
        """
        used: List[Region] = []
        for tensor in request.inputs:
            pending = tensor.data
            if type(pending) is not FromRegion:
                continue
            field = pending.field
            region = self._region(pending.region, field)
            ref = region.slice(pending.offset, pending.byte_size, field)
            dtype = DATATYPES.get(tensor.datatype)
            if dtype is None:
                items = bytes_elements(ref.view(), field)
                if len(items) != shape_size(tensor.shape):
                    raise InvalidArgument(
                        f"{field}: region '{region.name}' holds {len(items)} BYTES elements but shape "
                        f"{list(tensor.shape)} needs {shape_size(tensor.shape)}"
                    )
                tensor.data = items
            else:
                expected = shape_size(tensor.shape) * dtype.itemsize
                if pending.byte_size != expected:
                    problem = "too small" if pending.byte_size < expected else "too big"
                    raise InvalidArgument(
                        f"{field}.parameters.{BYTE_SIZE} is {pending.byte_size}, {problem} for shape "
                        f"{list(tensor.shape)} of {tensor.datatype} ({expected} bytes)"
                    )
                tensor.data = _array(ref, dtype, list(tensor.shape))
            used.append(region)
        for i, requested in enumerate(request.outputs or ()):
            params = requested.parameters
            if params is None or params.get(REGION) is None:
                continue
            field = f"outputs[{i}] ('{requested.name}')"
            name, offset, byte_size = _region_parameters(params, field)
            region = self._region(name, field)
            setattr(requested, TARGET_ATTRIBUTE, region.slice(offset, byte_size, field))
            used.append(region)
        if not used:
            return None
        for region in used:
            region.users += 1
        return Lease(used)


def refuse_regions(request: Any, where: str) -> Any:
    """
    ``request`` as it is, or InvalidArgument naming the first input or output that
    names a region: ``where`` (a stream) does not read from or write to shared memory.
    """
    for tensor in request.inputs:
        if type(tensor.data) is FromRegion:
            raise InvalidArgument(f"{tensor.data.field}: shared memory is not supported on {where}")
    for i, requested in enumerate(request.outputs or ()):
        params = requested.parameters
        if params is not None and params.get(REGION) is not None:
            raise InvalidArgument(
                f"outputs[{i}] ('{requested.name}').parameters.{REGION}: shared memory is not "
                f"supported on {where}"
            )
    return request


def require_registry(registry: Optional[SharedMemoryRegistry]) -> SharedMemoryRegistry:
    """``registry``, or Unavailable when the server has no shared-memory extension."""
    if registry is None:
        raise Unavailable("system shared memory is not enabled on this server")
    return registry
