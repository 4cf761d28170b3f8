"""
Headers between the transports and the runtimes, the same for REST and gRPC.

A request's HTTP headers (or gRPC metadata) reach the runtime as
``payload.parameters.headers``; a response's ``parameters.headers`` are taken out of
the body and sent back as HTTP headers (or gRPC metadata).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from v2d.types import HeaderDict, InferenceRequest, InferenceResponse, Parameters

__all__ = ["attach_headers", "take_headers"]


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
