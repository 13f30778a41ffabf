"""numba CPU kernels: one module per algorithm, the shared machinery in ``_launch``.

Importing this package imports numba; :mod:`fastoptim.kernels.dispatch` does so
only when a kernel is about to run.
"""
