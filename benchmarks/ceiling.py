"""
The ceiling: a bare twisted.web resource, on the same asyncio reactor and loop as v2d, that
answers the few Open Inference Protocol requests perf_analyzer makes (server metadata,
model metadata and configuration, infer) for a model ``add-one`` with canned bytes. Its
rate is what Twisted's HTTP server alone does on this machine; v2d's infer path is
measured against it.

The infer handler reads the request body and writes a fixed response: no JSON
decoding, no routing framework, no model. Run::

    python benchmarks/ceiling.py --port 8090 [--interface 127.0.0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any, List, Optional

NAME = "add-one"
SERVER = json.dumps({"name": "twisted.web", "version": "0", "extensions": []}).encode()
SMALL = 16
TENSOR = {"name": "x", "datatype": "FP32", "shape": [1, SMALL]}

METADATA = json.dumps(
    {
        "name": NAME,
        "versions": ["1"],
        "platform": "",
        "inputs": [TENSOR],
        "outputs": [dict(TENSOR, name="y")],
    }
).encode()
CONFIG = json.dumps(
    {
        "name": NAME,
        "max_batch_size": 0,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1, SMALL]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1, SMALL]}],
    }
).encode()
INFER = json.dumps(
    {
        "model_name": NAME,
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, SMALL], "data": [1.0] * SMALL}],
    }
).encode()


def make_site() -> Any:
    """A twisted.web Site answering health, metadata, config and infer for add-one."""
    from twisted.web import resource, server

    class Canned(resource.Resource):
        isLeaf = True

        def __init__(self, body: bytes, method: bytes = b"GET") -> None:
            super().__init__()
            self.body = body
            self.method = method

        def render(self, request: Any) -> bytes:
            if request.method != self.method:
                request.setResponseCode(405)
                return b""
            request.content.read()
            request.setHeader(b"content-type", b"application/json")
            return self.body

    def node(children: dict) -> Any:
        r = resource.Resource()
        for key, child in children.items():
            r.putChild(key, child)
        return r

    model = node({b"config": Canned(CONFIG), b"ready": Canned(b""), b"infer": Canned(INFER, b"POST")})
    model.render_GET = lambda request: METADATA  # GET /v2/models/add-one
    v2 = node(
        {
            b"health": node({b"live": Canned(b""), b"ready": Canned(b"")}),
            b"models": node({NAME.encode(): model}),
        }
    )
    v2.render_GET = lambda request: SERVER  # GET /v2
    root = node({b"v2": v2})
    site = server.Site(root)
    site.displayTracebacks = False
    site.log = lambda request: None  # no access log, as v2d by default
    return site


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args(argv)

    from twisted.internet import asyncioreactor

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from v2d.tap import new_event_loop

    loop = new_event_loop()  # the loop v2d runs on by default, so that the two compare
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    from twisted.internet import reactor

    reactor.listenTCP(args.port, make_site(), interface=args.interface)  # type: ignore[attr-defined]
    sys.stdout.write(f"ceiling listening on {args.interface}:{args.port}\n")
    sys.stdout.flush()
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
