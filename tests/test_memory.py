"""Buffers fastoptim allocates for itself (:mod:`fastoptim.kernels.memory`): ordinary tensors, on huge-page memory where asked."""

from __future__ import annotations

import copy
import io
import pickle
import re
from pathlib import Path

import pytest
import torch

from fastoptim.kernels.memory import flat_buffer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.bfloat16, torch.float16])
def test_flat_buffer_is_an_ordinary_tensor(dtype):
    buf = flat_buffer(1000, dtype, torch.device("cpu"))
    assert buf.shape == (1000,) and buf.dtype == dtype and buf.is_contiguous() and buf.device.type == "cpu"
    buf.copy_(torch.arange(1000).to(dtype))
    for other in (copy.deepcopy(buf), pickle.loads(pickle.dumps(buf))):
        assert torch.equal(other, buf) and other.data_ptr() != buf.data_ptr()
    saved = io.BytesIO()
    torch.save(buf, saved)
    saved.seek(0)
    assert torch.equal(torch.load(saved), buf)


def test_flat_buffer_off_the_cpu_is_torch_empty():
    buf = flat_buffer(10, torch.float32, torch.device("meta"))
    assert buf.device.type == "meta" and buf.shape == (10,)


def _thp_mode() -> str | None:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    found = re.search(r"\[(\w+)\]", text)
    return found.group(1) if found else None


def _huge_page_eligible(address: int) -> bool | None:
    """``THPeligible`` of the mapping holding ``address`` (/proc/self/smaps), or None if the kernel does not say."""
    try:
        text = Path("/proc/self/smaps").read_text()
    except OSError:
        return None
    eligible = None
    inside = False
    for line in text.splitlines():
        head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if head:
            inside = int(head.group(1), 16) <= address < int(head.group(2), 16)
        elif inside and line.startswith("THPeligible:"):
            eligible = line.split()[1] == "1"
    return eligible


@pytest.mark.skipif(_thp_mode() != "madvise", reason="transparent huge pages are not in 'madvise' mode here")
def test_large_cpu_buffers_ask_for_huge_pages():
    """With THP in ``madvise`` mode, a 16 MiB float32 buffer is eligible for huge pages; torch.empty's is not."""
    ours = flat_buffer(4 << 20, torch.float32, torch.device("cpu"))
    theirs = torch.empty(4 << 20, dtype=torch.float32)
    ours.zero_()
    theirs.zero_()
    verdict = _huge_page_eligible(ours.data_ptr() + ours.nbytes // 2)
    if verdict is None:
        pytest.skip("/proc/self/smaps has no THPeligible field here")
    assert verdict is True
    assert _huge_page_eligible(theirs.data_ptr() + theirs.nbytes // 2) is False
