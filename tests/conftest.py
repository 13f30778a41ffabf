import os
import sys

# tests/ holds shared helpers (parity.py) imported by the test modules.
sys.path.insert(0, os.path.dirname(__file__))


import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "reference_backend: run fastoptim's reference rules (bit-exact tests against torch's for-loop path)",
    )


@pytest.fixture(autouse=True)
def _reference_backend_when_marked(request):
    """Tests marked ``reference_backend`` run the reference rules, not the kernels.

    The per-algorithm modules compare the reference rules with torch bit for
    bit; kernels are compared with the reference rules in test_kernels.py and
    with torch (to torch's tolerances) in test_optim_db_parity.py.
    """
    if request.node.get_closest_marker("reference_backend") is None:
        yield
        return
    from fastoptim.kernels.dispatch import use_backend

    with use_backend("reference"):
        yield


@pytest.fixture(params=[None, 1600, 0], ids=["whole", "mixed", "split"])
def tensor_cut(request, monkeypatch):
    """Where a two-pass kernel (LARS, Adafactor) cuts between tensors one thread takes whole and tensors split over the threads.

    ``_launch.WHOLE_TENSOR_BYTES``: the default (every test tensor whole), a
    cut at 1600 bytes (test tensors on both sides, which depending on the
    dtype), and 0 (every tensor split into chunk segments).
    """
    if request.param is not None:
        launch = pytest.importorskip("fastoptim.kernels.cpu._launch")
        monkeypatch.setattr(launch, "WHOLE_TENSOR_BYTES", request.param)
    return request.param
