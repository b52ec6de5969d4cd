# facefleet: make demo | make test | make bench | make gpu-test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo-out

.PHONY: install demo test bench gpu-test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m facefleet.samples tests/data $(DEMO)/sample.mp4 --frames 300
	$(BIN)/facefleet run $(DEMO)/sample.mp4 -o $(DEMO)/sample_anonymized.mp4
	@echo "input:  $(DEMO)/sample.mp4"
	@echo "output: $(DEMO)/sample_anonymized.mp4"

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/anonymize_vs_deface.py

gpu-test: install
	$(BIN)/python -m pytest -q -m gpu

clean:
	rm -rf $(DEMO) .pytest_cache build *.egg-info
