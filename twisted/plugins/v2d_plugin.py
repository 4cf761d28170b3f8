"""The ``twistd v2d`` plugin: one ServiceMaker pointing at v2d.tap, nothing heavy imported."""

from twisted.application.service import ServiceMaker

v2d = ServiceMaker(
    "v2d",
    "v2d.tap",
    "Serve custom Python inference runtimes over the Open Inference Protocol (REST and gRPC).",
    "v2d",
)
