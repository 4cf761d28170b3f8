"""``mlserver.codecs.pandas``'s names: the ``pd`` request codec (pandas is imported when used)."""

from v2d.codecs._pandas import PandasCodec, to_response_output

_to_response_output = to_response_output  # MLServer's private spelling, used by code written against it

__all__ = ["PandasCodec", "to_response_output"]
