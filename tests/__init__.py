"""v2d tests."""
