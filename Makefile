# tlassoc: set-up and run commands. Each target builds its own virtual environment.
#   make reproduce   set up, then run the main job (RPE vs APE length generalisation) into results/
#   make test        set up, then run the test suite on TransformerLens 4.x (newest) and 3.x (lowest)
#   make bench       run the benchmarks (TransformerLens 4.x environment)
#   make lint        ruff check + format check

PYTHON ?= python3
OUT ?= results
PYTEST_ARGS ?=
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export MPLBACKEND ?= Agg

.PHONY: reproduce quickstart test test-tl4 test-tl3 bench lint clean

.venv-%/.installed: pyproject.toml constraints/%.txt
	$(PYTHON) -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --upgrade pip
	.venv-$*/bin/python -m pip install --quiet -c constraints/$*.txt -e ".[dev]"
	touch $@

reproduce: .venv-tl4/.installed
	.venv-tl4/bin/tlassoc reproduce --out $(OUT)

quickstart: .venv-tl4/.installed
	.venv-tl4/bin/python -m tlassoc.quickstart

test: test-tl4 test-tl3

test-tl4: .venv-tl4/.installed
	@echo "== tests on $$(.venv-tl4/bin/python -c 'import importlib.metadata as m; print("transformer-lens", m.version("transformer-lens"))')"
	.venv-tl4/bin/python -m pytest $(PYTEST_ARGS)

test-tl3: .venv-tl3/.installed
	@echo "== tests on $$(.venv-tl3/bin/python -c 'import importlib.metadata as m; print("transformer-lens", m.version("transformer-lens"))')"
	.venv-tl3/bin/python -m pytest $(PYTEST_ARGS)

bench: .venv-tl4/.installed
	@for b in benchmarks/bench_*.py; do echo "== $$b"; .venv-tl4/bin/python $$b || exit 1; done

lint: .venv-tl4/.installed
	.venv-tl4/bin/ruff check tlassoc tests benchmarks
	.venv-tl4/bin/ruff format --check tlassoc tests benchmarks

clean:
	rm -rf .venv-tl4 .venv-tl3 $(OUT)
