"""Code generated from protos/ (see protos/generate.py)."""
