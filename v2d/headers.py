"""
Headers between the transports and the runtimes, the same for REST and gRPC.

A request's HTTP headers (or gRPC metadata) reach the runtime as
``payload.parameters.headers``; a response's ``parameters.headers`` are taken out of
the body and sent back as HTTP headers (or gRPC metadata).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from v2d.errors import InvalidArgument
from v2d.types import DECODED_PARAMETER, HeaderDict, InferenceRequest, InferenceResponse, Parameters

__all__ = ["attach_headers", "client_parameters", "extract_headers", "insert_headers", "take_headers"]


def client_parameters(values: Mapping[str, Any], field: str) -> Parameters:
    """
    A client's parameters object, checked: ``content_type`` a string, ``headers`` an
    object of strings, the codecs' cache key refused; InvalidArgument naming the field.
    Any other key is kept (even one named like a method of Parameters, which it does not hide).
    """
    content_type = values.get("content_type")
    if content_type is not None and not isinstance(content_type, str):
        raise InvalidArgument(f"{field}.content_type must be a string")
    headers = values.get("headers")
    if headers is not None:
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise InvalidArgument(f"{field}.headers must be an object of strings")
    if DECODED_PARAMETER in values:
        raise InvalidArgument(f"{field}.{DECODED_PARAMETER} is reserved")
    for key in values:
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"{field} has an invalid key {key!r}")
    return Parameters(**values)


def attach_headers(payload: InferenceRequest, headers: HeaderDict) -> None:
    """Put transport headers into ``payload.parameters.headers`` (over any the body carried)."""
    if payload.parameters is None:
        payload.parameters = Parameters(headers=headers)
    elif payload.parameters.headers:
        merged = HeaderDict(payload.parameters.headers)
        merged.update(headers)
        payload.parameters.headers = merged
    else:
        payload.parameters.headers = headers


def take_headers(response: InferenceResponse) -> Optional[Dict[str, Any]]:
    """Remove and return ``response.parameters.headers`` (dropping parameters left empty)."""
    params = response.parameters
    if params is None or not params.headers:
        return None
    headers = params.headers
    params.headers = None
    if not params.to_dict():
        response.parameters = None
    return headers


def insert_headers(inference_request: InferenceRequest, headers: Dict[str, str]) -> InferenceRequest:
    """MLServer's helper: set ``inference_request.parameters.headers`` to ``headers``."""
    if inference_request.parameters is None:
        inference_request.parameters = Parameters()
    inference_request.parameters.headers = headers
    return inference_request


def extract_headers(inference_response: InferenceResponse) -> Optional[Dict[str, str]]:
    """MLServer's helper: remove and return ``inference_response.parameters.headers`` (None if unset)."""
    params = inference_response.parameters
    if params is None or params.headers is None:
        return None
    headers = params.headers
    params.headers = None
    return headers
