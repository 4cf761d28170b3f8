"""``mlserver.codecs.lists``'s names: list checks of the BYTES codecs."""

from v2d.codecs._base import is_list_of

__all__ = ["is_list_of"]
