"""Packaging for v2d: the daemon, its twistd plugin and the v2d-build command."""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version() -> str:
    with open(os.path.join(HERE, "v2d", "_version.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def read_readme() -> str:
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        return f.read()


setup(
    name="v2d",
    version=read_version(),
    description="An Open Inference Protocol (V2) server for custom Python runtimes, built on Twisted",
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["v2d", "v2d.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/v2d_plugin.py"], "v2d": ["py.typed"]},
    include_package_data=True,
    zip_safe=False,
    install_requires=[
        "twisted[tls]>=24.7.0",
        "klein>=24.8.0",
        "grpcio>=1.66.0",
        "grpcio-health-checking>=1.66.0",
        "grpcio-reflection>=1.66.0",
        "hpack>=4.0.0",
        "protobuf>=5.27.0",
        "numpy>=1.26",
        "zope.interface>=6.0",
        "attrs>=23.1.0",
        "orjson>=3.10",
        "prometheus-client>=0.20",
        "docker>=7.0",
        "uvloop>=0.19; sys_platform != 'win32'",
    ],
    extras_require={
        "pandas": ["pandas>=2.0"],
        "test": [
            "pytest>=8.0",
            "h2>=4.1.0",  # an HTTP/2 client of its own, for the h2 engine's tests
            "treq>=23.11.0",
            # 2.42 and later cap grpcio below 1.68, under what v2d installs: this bound
            # keeps pip from backtracking through every release to find that out.
            "tritonclient[http,grpc]>=2.41,<2.42",
            "grpcio-tools>=1.66.0",
            "build>=1.2",
            "kubernetes-validate>=1.28",
            "PyYAML>=6.0",
            "jsonschema>=4.18",
            "venv-pack>=0.2.0",
            "pandas>=2.0",
        ],
    },
    entry_points={
        "console_scripts": [
            "v2d-build=v2d.build.cli:main",
            "v2d=v2d.cli:main",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
    ],
)
