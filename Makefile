# Two entry points for a new user: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
TORCH_INDEX ?=
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# torch first and pinned: a bare `torch` would fetch gigabytes of CUDA libraries. Where pip's
	# default index serves the CUDA build, a CPU-only machine passes TORCH_INDEX (see README).
	$(VENV)/bin/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(VENV)/bin/pip install --quiet -e '.[test,export,openvino,service,scale]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/aoiflow demo --out demo_out

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/real_data.py

clean:
	rm -rf demo_out .pytest_cache
