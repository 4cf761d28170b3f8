"""
Errors raised while encoding or decoding payloads.

Decoding a client's bad input raises ``v2d.errors.InferenceError`` (a 400); the errors
here are the runtime's side: a payload no codec can encode, a missing optional
dependency, a type hint no codec knows.
"""

from __future__ import annotations

from v2d.errors import Internal

__all__ = ["CodecError", "CodecNotFound"]


class CodecError(Internal):
    """A payload could not be encoded or decoded by the runtime's codecs."""


class CodecNotFound(CodecError):
    """No registered codec handles a content type, payload or type hint."""
