"""Tests that need a real Docker engine (see tests/support/docker_engine.py)."""
