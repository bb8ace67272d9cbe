# Two commands do all the set-up on a fresh machine:  make demo  /  make test
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The torch build for the project's machines (a CUDA build that runs on CPU; other torchvision
# builds fail to import there). Override for your own machine: make demo TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.exgramed-installed

.PHONY: install demo test test-fast bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[demo,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/exgramed demo

# Two pytest workers (pytest-xdist), one test file each at a time, one torch thread each: most slow tests
# wait on a single-threaded swift start-up, so two of them share the machine's two cores well (without
# OMP_NUM_THREADS=1 the workers' torch threads oversubscribe the cores).
PYTEST_WORKERS ?= 2
TEST_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1

test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=25

# The inner loop: everything but the tests that start swift / CLI processes, a browser or several processes.
test-fast: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not slow and not browser and not distributed"

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/bench_solvers.py
	$(PY) benchmarks/bench_mga.py

clean:
	rm -rf exgramed_demo .pytest_cache
