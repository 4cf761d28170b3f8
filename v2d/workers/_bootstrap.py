"""
The few lines a worker child runs first.

``COMMAND`` (passed with ``python -I -c``) puts the server's own copy of v2d (a zip
of just the v2d package, see ``_code``) first on ``sys.path`` and imports the zip's
top-level ``_v2d_boot`` module, whose source is ``SOURCE``: it runs
``v2d.workers._child``. If that cannot even be imported (no
numpy, a Python too old for v2d's code), they still answer the handshake, in a JSON
frame, with what they found, so the server can say what to install. The source is
kept to syntax old Pythons parse, so that even they can report.
"""

from __future__ import annotations

__all__ = ["COMMAND", "MODULE", "SOURCE"]

#: The name of the boot module at the top of the zip.
MODULE = "_v2d_boot"

#: What ``python -I -c`` runs; argv: the zip, the child's input fd, its output fd.
COMMAND = f"import sys; sys.path.insert(0, sys.argv[1]); import {MODULE}"

SOURCE = r"""
import sys, os, json, struct, pickle, platform
sys.path[:] = [p for p in sys.path if p not in ("", ".")]
in_fd, out_fd = int(sys.argv[2]), int(sys.argv[3])
try:
    from v2d.workers._child import main
except BaseException as exc:
    try:
        from importlib.metadata import version
        try:
            numpy = version("numpy")
        except Exception:
            numpy = None
    except Exception:
        numpy = None
    hello = {
        "wire": None, "v2d": None, "python": platform.python_version(),
        "implementation": sys.implementation.name, "pickle": pickle.HIGHEST_PROTOCOL,
        "numpy": numpy, "executable": sys.executable,
        "error": "%s: %s" % (type(exc).__name__, exc),
    }
    payload = json.dumps(hello).encode()
    os.write(out_fd, struct.pack("!cQ", b"J", len(payload)) + payload)
    sys.exit(3)
main(in_fd, out_fd)
"""
