"""``mlserver.codecs.base64``'s names: the ``base64`` codec."""

from v2d.codecs._base64 import Base64Codec

__all__ = ["Base64Codec"]
