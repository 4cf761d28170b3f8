"""
Where a model's files are: ``parameters.uri`` resolved against the model's folder.

``get_model_uri`` is MLServer's helper (``mlserver.utils.get_model_uri``), with its
behaviour: a URI with a scheme other than ``file`` is returned as it is; a relative
path is taken from the folder holding the model's ``model-settings.json``; a folder
is searched for the first of ``wellknown_filenames``; a path that does not exist is an
``InvalidModelURI`` (422).

Imported by worker children (Python 3.9 and up): standard library only.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Any, Optional, Sequence

from v2d.errors import InvalidModelURI

__all__ = ["get_model_uri", "to_absolute_path"]


def to_absolute_path(model_settings: Any, uri: str) -> str:
    """``uri`` relative to the model's folder (unchanged when absolute or the folder is unknown)."""
    source: Optional[str] = getattr(model_settings, "_source", None)
    if source is None:
        return uri
    return os.path.normpath(os.path.join(os.path.dirname(source), uri))


async def get_model_uri(settings: Any, wellknown_filenames: Sequence[str] = ()) -> str:
    """The model's artefact: ``parameters.uri`` made absolute (see the module's docstring)."""
    params = getattr(settings, "parameters", None)
    uri = getattr(params, "uri", None) if params is not None else None
    if not uri:
        raise InvalidModelURI(settings.name)
    parsed = urllib.parse.urlparse(uri, scheme="file")
    if parsed.scheme != "file":
        return uri
    path = to_absolute_path(settings, parsed.path)
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        for name in wellknown_filenames:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        return path
    raise InvalidModelURI(settings.name, path)
