# Short aliases; the commands themselves are in README.md.
PY ?= python

.PHONY: install test lint bench check-gpu

install:
	$(PY) -m pip install torch==2.13.0 && $(PY) -m pip install -r requirements-dev.txt \
	  && $(PY) -m pip install --no-build-isolation -e .

test:
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

lint:
	ruff check . && ruff format --check fused_rnn tests

bench:
	$(PY) -m benchmarks.run --device cpu --quick
