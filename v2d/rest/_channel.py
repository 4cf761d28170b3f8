"""
The HTTP channel of the REST site: a request Twisted's parser refuses (a malformed
request line, header, ``Content-Length`` or chunked framing) is answered with the
protocol's JSON error object, not an empty 400.
"""

from __future__ import annotations

from v2d._twisted import HookedHTTPChannel
from v2d.rest._json import error_body

__all__ = ["JSONErrorChannel", "MALFORMED"]

#: The message of a request the HTTP parser refused.
MALFORMED = (
    "malformed HTTP request: the request line, a header, Content-Length or "
    "Transfer-Encoding framing is invalid"
)


class JSONErrorChannel(HookedHTTPChannel):
    """An HTTPChannel whose bad-request answer is ``{"error": ...}`` (and closes, as before)."""

    def respond_to_bad_request(self) -> None:
        body = error_body(MALFORMED)
        transport = self.transport
        assert transport is not None
        transport.write(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.loseConnection()
