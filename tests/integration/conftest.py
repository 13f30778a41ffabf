import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "compile: runs torch.compile (a few seconds each on 2 cores)")
