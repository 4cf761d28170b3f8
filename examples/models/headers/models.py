"""
A runtime that reads request headers and sets response headers.

Request HTTP headers (or gRPC metadata) arrive in ``payload.parameters.headers``;
whatever the runtime puts in the response's ``parameters.headers`` goes back as HTTP
headers (or gRPC metadata). Here: ``X-Request-Id`` is echoed back, and the response
says how many headers the request carried.
"""

from v2d import MLModel
from v2d.codecs import StringCodec
from v2d.types import InferenceRequest, InferenceResponse, Parameters


class HeadersEcho(MLModel):
    def predict(self, payload: InferenceRequest) -> InferenceResponse:
        headers = (payload.parameters.headers if payload.parameters else None) or {}
        texts = StringCodec.decode_input(payload.inputs[0])
        reply = {"X-Header-Count": str(len(headers))}
        if "x-request-id" in headers:
            reply["X-Request-Id"] = headers["x-request-id"]
        return InferenceResponse(
            model_name=self.name,
            outputs=[StringCodec.encode_output("text", [t.upper() for t in texts])],
            parameters=Parameters(headers=reply),
        )
