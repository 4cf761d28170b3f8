"""The v2d version, kept in one place for setup.py, the handshake and metadata."""

__version__ = "0.1.0"
