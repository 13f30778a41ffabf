"""Integration tests: fastoptim inside the PyTorch ecosystem (one module per integration)."""
