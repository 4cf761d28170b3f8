"""
Start KServe 0.21's model server on the benchmark runtimes, as KServe's documentation
shows (``kserve.ModelServer().start([models])``, settings from its command line),
with one change: it listens on 127.0.0.1 rather than on every interface.

Run with the peer's own interpreter (its venv)::

    python serve.py --http_port 18080 --grpc_port 18081 \
        --grpc_max_send_message_length 1073741824 --grpc_max_receive_message_length 1073741824

Every option is KServe's own (``kserve.model_server`` reads ``sys.argv`` when it is
imported). The models are those of ``benchmarks/models/kserve_runtimes.py``, one of
each, under the names the other servers use.
"""

import os
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "models"))

import kserve  # noqa: E402
import kserve.model_server as kserve_server  # noqa: E402
import kserve.protocol.grpc.server as kserve_grpc  # noqa: E402
import kserve.protocol.rest.server as kserve_rest  # noqa: E402
from grpc import aio  # noqa: E402
from kserve_runtimes import MODELS  # noqa: E402

LOOPBACK = "127.0.0.1"


class _LoopbackRESTServer(kserve_rest.RESTServer):
    """KServe's REST server (uvicorn), bound to loopback instead of 0.0.0.0."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = LOOPBACK


class _LoopbackAio:
    """``grpc.aio`` as KServe's gRPC server module uses it, its port on loopback instead of [::]."""

    def __getattr__(self, name: str) -> Any:
        return getattr(aio, name)

    @staticmethod
    def server(*args: Any, **kwargs: Any) -> Any:
        server = aio.server(*args, **kwargs)
        add = server.add_insecure_port
        server.add_insecure_port = lambda address: add(address.replace("[::]", LOOPBACK))
        return server


def main() -> None:
    kserve_server.RESTServer = _LoopbackRESTServer  # type: ignore[misc]
    kserve_grpc.aio = _LoopbackAio()  # type: ignore[assignment]
    models = [runtime(name) for name, runtime in MODELS.items()]
    kserve.ModelServer().start(models)


if __name__ == "__main__":
    main()
