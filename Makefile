# The two set-up commands (see README):  `make compare`  and  `make test`.
# Each installs what it needs first.  torch is pinned to the CPU build that
# this machine kind carries (an unpinned torch would pull GBs of CUDA wheels).
PYTHON ?= python3
TORCH_PIN ?= torch==2.13.0

.PHONY: install compare test bench

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check "$(TORCH_PIN)"
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[test]"

compare: install
	$(PYTHON) -m fastoptim.cli compare

test: install
	$(PYTHON) -m pytest -q -p no:cacheprovider

bench: install
	$(PYTHON) -m fastoptim.cli bench
