# tlassoc: set-up and run commands. Each target builds its own virtual environment.
#   make reproduce   set up, then run the main job (RPE vs APE length generalisation) into results/
#   make test        set up, then run the test suite on TransformerLens 4.x (newest) and 3.x (lowest)
#   make bench       run the benchmarks (TransformerLens 4.x environment)
#   make notebook    set up, register the Jupyter kernel `tlassoc`, start JupyterLab on tutorials/
#   make tutorials   re-execute every tutorial and store its outputs (and measured run time)
#   make screenshots the PNGs under docs/img/ (headless Chromium)
#   make lint        ruff check + format check

PYTHON ?= python3
OUT ?= results
PYTEST_ARGS ?=
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export MPLBACKEND ?= Agg

.PHONY: reproduce quickstart test test-tl4 test-tl3 bench lint clean notebook kernel tutorials screenshots

.venv-%/.installed: pyproject.toml constraints/%.txt
	$(PYTHON) -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --upgrade pip
	.venv-$*/bin/python -m pip install --quiet -c constraints/$*.txt -e ".[dev,notebook,sweep]"
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

kernel: .venv-tl4/.installed
	.venv-tl4/bin/python -m ipykernel install --sys-prefix --name tlassoc --display-name "Python (tlassoc)"

# MPLBACKEND is unset for Jupyter so that figures show inline; JUPYTER_ARGS go to jupyter lab
# (as root, as in containers, JupyterLab needs --allow-root).
JUPYTER_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)
notebook: kernel
	env -u MPLBACKEND .venv-tl4/bin/jupyter lab --notebook-dir=tutorials $(JUPYTER_ARGS)

tutorials: kernel
	env -u MPLBACKEND .venv-tl4/bin/python benchmarks/tutorials.py

screenshots: .venv-tl4/.installed
	.venv-tl4/bin/python benchmarks/screenshots.py

lint: .venv-tl4/.installed
	.venv-tl4/bin/ruff check tlassoc tests benchmarks
	.venv-tl4/bin/ruff format --check tlassoc tests benchmarks

clean:
	rm -rf .venv-tl4 .venv-tl3 $(OUT)
