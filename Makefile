# Short aliases; the commands themselves are in README.md.
PY ?= python

.PHONY: demo ci install test lint bench check-gpu

# Fresh machine: venv + install + `python -m fused_rnn` / the whole CI (fresh venv, wheel, tests).
demo:
	bash scripts/quickstart.sh

ci:
	bash .ci/run

install:
	$(PY) -m pip install torch==2.13.0 && $(PY) -m pip install -r requirements-dev.txt \
	  && $(PY) -m pip install --no-build-isolation -e .

test:
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

lint:
	ruff check . && ruff format --check fused_rnn tests

bench:
	$(PY) -m benchmarks.run --device cpu --quick
