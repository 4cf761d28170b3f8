"""``mlserver.codecs.errors``'s names: the codecs' errors."""

from v2d.codecs._errors import CodecError, CodecNotFound, InputsNotFound, OutputNotFound

__all__ = ["CodecError", "CodecNotFound", "InputsNotFound", "OutputNotFound"]
