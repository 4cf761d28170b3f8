"""The Open Inference Protocol over REST (Klein on twisted.web)."""

from v2d.rest._api import RestAPI
from v2d.rest._site import make_site

__all__ = ["RestAPI", "make_site"]
