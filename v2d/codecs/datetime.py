"""``mlserver.codecs.datetime``'s names: the ``datetime`` codec."""

from v2d.codecs._datetime import DatetimeCodec

__all__ = ["DatetimeCodec"]
