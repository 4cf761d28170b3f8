"""
Handlers a runtime adds to the server (MLServer's ``mlserver.handlers`` path).

``custom_handler`` marks a runtime method as a REST endpoint of its own; the server
mounts it while the model is loaded (docs/custom-handlers.md says how arguments are
passed).

Imported by worker children: standard library only.
"""

from v2d.handlers.custom import CustomHandler, custom_handler, get_custom_handlers

__all__ = ["CustomHandler", "custom_handler", "get_custom_handlers"]
