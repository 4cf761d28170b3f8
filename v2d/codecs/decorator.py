"""``mlserver.codecs.decorator``'s names: ``decode_args`` and its ``SignatureCodec``."""

from v2d.codecs._decorator import SignatureCodec, as_list, decode_args

_as_list = as_list  # MLServer's private spelling, used by code written against it

__all__ = ["SignatureCodec", "as_list", "decode_args"]
