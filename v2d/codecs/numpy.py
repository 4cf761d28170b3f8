"""``mlserver.codecs.numpy``'s names: the ``np`` codecs and the dtype helpers."""

from v2d.codecs._base import is_list_of
from v2d.codecs._numpy import NumpyCodec, NumpyRequestCodec, to_datatype, to_dtype

__all__ = ["NumpyCodec", "NumpyRequestCodec", "is_list_of", "to_datatype", "to_dtype"]
