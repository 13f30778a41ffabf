"""Buffers fastoptim allocates for itself, placed where the CPU reads them fastest.

On Linux the kernel backs anonymous memory with 4 KiB pages unless asked for
huge (2 MiB) ones; where transparent huge pages are set to ``madvise`` (the
usual default) only memory that asks gets them.  numpy's allocator asks
(``madvise(MADV_HUGEPAGE)`` on arrays of 4 MiB and more) and torch's does not
(unless ``THP_MEM_ALLOC_ENABLE=1``).  On this project's VMs a read-heavy pass
over 4 KiB pages is slower: a numba dot over two 256 MiB tensors read 18.6
GB/s on torch's memory and 31.0 on numpy's (docs/performance.md, "Reads alone
are slower than the ceiling's mix").

:func:`flat_buffer` is for the large 1-D work buffers an optimizer owns and
reads every step (L-BFGS's flat gradient, direction and curvature pairs): on
the CPU, for the dtypes numpy has, the memory is numpy's, shared with the
tensor (``torch.from_numpy``); elsewhere it is ``torch.empty``.  Either way
the result is an ordinary contiguous tensor: it pickles, copies and loads as
any other.  Parameters, gradients and per-parameter state keep the memory
torch gives them (their layout is part of torch's contract).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

#: dtypes whose buffers numpy allocates (it has no bfloat16 or float16 arithmetic to matter here)
_NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.complex64: np.complex64,
    torch.complex128: np.complex128,
}


def flat_buffer(numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised 1-D tensor of ``numel`` elements, on memory that asks for huge pages where it can (see the module docstring)."""
    numpy_dtype = _NUMPY_DTYPES.get(dtype)
    if numpy_dtype is None or torch.device(device).type != "cpu":
        return torch.empty(numel, dtype=dtype, device=device)
    return torch.from_numpy(np.empty(numel, dtype=numpy_dtype))
