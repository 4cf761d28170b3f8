"""``mlserver.codecs.string``'s names: the ``str`` codecs and the UTF-8 helpers."""

from v2d.codecs._string import StringCodec, StringRequestCodec, decode_str, encode_str

__all__ = ["StringCodec", "StringRequestCodec", "decode_str", "encode_str"]
