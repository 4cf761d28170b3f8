"""
The REST wire's JSON: request bodies to v2d.types and responses back.

Parsing uses orjson; numeric tensor data becomes numpy arrays in one step
(v2d.tensors); every error is an InvalidArgument naming the field.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import orjson

from v2d.errors import Internal, InvalidArgument
from v2d.headers import client_parameters
from v2d.rest._shm import region_output_entry
from v2d.shm import WrittenToRegion, from_region
from v2d.tensors import check_names, check_shape, decode_json_tensor, prepare_output
from v2d.types import (
    DATATYPES,
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    RequestOutput,
)

__all__ = ["decode_request", "dumps", "encode_response", "error_body", "parse_json_object", "response_dict"]

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def dumps(value: Any) -> bytes:
    """JSON bytes, numpy-aware."""
    return orjson.dumps(value, option=_DUMPS_OPTIONS)


def error_body(message: str) -> bytes:
    """The protocol's error object."""
    return orjson.dumps({"error": message})


def parse_json_object(body: bytes, what: str = "request body") -> Dict[str, Any]:
    """A JSON object from bytes, or InvalidArgument."""
    if not body:
        raise InvalidArgument(f"{what} is empty; expected a JSON object")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidArgument(f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return value


def _parameters(value: Any, field: str) -> Optional[Parameters]:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field} must be an object")
    return client_parameters(value, field)


def _string(value: Any, field: str, required: bool = True) -> Optional[str]:
    if value is None:
        if required:
            raise InvalidArgument(f"{field} is required")
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a string")
    return value


def decode_input_header(item: Any, field: str) -> tuple:
    """(name, shape, datatype, parameters) of one input object, checked."""
    if not isinstance(item, dict):
        raise InvalidArgument(f"{field} must be an object")
    name = _string(item.get("name"), f"{field}.name")
    if "shape" not in item:
        raise InvalidArgument(f"{field}.shape is required")
    shape = check_shape(item["shape"], field)
    datatype = _string(item.get("datatype"), f"{field}.datatype")
    if datatype not in DATATYPES:
        raise InvalidArgument(
            f"{field}: unknown datatype {datatype!r} (expected one of {', '.join(DATATYPES)})"
        )
    params = _parameters(item.get("parameters"), f"{field}.parameters")
    return name, shape, datatype, params


def decode_request(doc: Dict[str, Any], binary: Any = None) -> InferenceRequest:
    """
    An InferenceRequest from a parsed JSON body. ``binary(field, index, item, shape,
    datatype, params)`` supplies data for inputs that use the binary extension.
    """
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidArgument("id must be a string")
    inputs_doc = doc.get("inputs")
    if inputs_doc is None:
        raise InvalidArgument("inputs is required")
    if not isinstance(inputs_doc, list):
        raise InvalidArgument("inputs must be a list")
    inputs: List[RequestInput] = []
    for i, item in enumerate(inputs_doc):
        field = f"inputs[{i}]"
        name, shape, datatype, params = decode_input_header(item, field)
        field = f"input '{name}'" if name else field
        region = from_region(field, params)
        if region is not None:
            data: Any = region
        elif params is not None and binary is not None and params.get("binary_data_size") is not None:
            data = binary(field, params, shape, datatype)
        else:
            if "data" not in item:
                raise InvalidArgument(f"{field}: data is required")
            data = decode_json_tensor(datatype, shape, item["data"], field)
        inputs.append(RequestInput(name=name, shape=shape, datatype=datatype, data=data, parameters=params))
    outputs = None
    outputs_doc = doc.get("outputs")
    if outputs_doc is not None:
        if not isinstance(outputs_doc, list):
            raise InvalidArgument("outputs must be a list")
        outputs = []
        for i, item in enumerate(outputs_doc):
            if not isinstance(item, dict):
                raise InvalidArgument(f"outputs[{i}] must be an object")
            outputs.append(
                RequestOutput(
                    name=_string(item.get("name"), f"outputs[{i}].name") or "",
                    parameters=_parameters(item.get("parameters"), f"outputs[{i}].parameters"),
                )
            )
    request = InferenceRequest(
        id=request_id,
        parameters=_parameters(doc.get("parameters"), "parameters"),
        inputs=inputs,
        outputs=outputs,
    )
    check_names(request)
    return request


def _json_bytes_items(items: List[Any], name: str) -> List[str]:
    out = []
    for item in items:
        if isinstance(item, (bytes, bytearray, memoryview)):
            try:
                out.append(bytes(item).decode("utf-8"))
            except UnicodeDecodeError:
                raise Internal(
                    f"output '{name}' holds bytes that are not UTF-8; JSON cannot carry them "
                    "(ask for it with the binary data extension, or encode it with base64)"
                ) from None
        elif isinstance(item, str):
            out.append(item)
        else:
            out.append(str(item))
    return out


def response_dict(response: InferenceResponse, output_data: Any = None) -> Dict[str, Any]:
    """
    The JSON form of a response (headers already taken out). ``output_data(output,
    datatype, shape, flat, numeric, params)`` may put an output's data elsewhere (the
    binary extension) and return True, adding to ``params``; otherwise data goes in
    the JSON.
    """
    outputs = []
    for output in response.outputs:
        if type(output.data) is WrittenToRegion:
            outputs.append(region_output_entry(output))
            continue
        datatype, shape, flat, numeric = prepare_output(output)
        entry: Dict[str, Any] = {"name": output.name, "shape": shape, "datatype": datatype}
        params = output.parameters.to_dict() if output.parameters is not None else {}
        placed = output_data is not None and output_data(output, datatype, shape, flat, numeric, params)
        if params:
            entry["parameters"] = params
        if not placed:
            entry["data"] = flat if numeric else _json_bytes_items(flat, output.name)
        outputs.append(entry)
    doc: Dict[str, Any] = {"model_name": response.model_name}
    if response.model_version is not None:
        doc["model_version"] = response.model_version
    if response.id is not None:
        doc["id"] = response.id
    if response.parameters is not None:
        params = response.parameters.to_dict()
        if params:
            doc["parameters"] = params
    doc["outputs"] = outputs
    return doc


def encode_response(response: InferenceResponse) -> bytes:
    """The JSON body of a response."""
    return dumps(response_dict(response))
