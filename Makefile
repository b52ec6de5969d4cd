# facefleet: make demo | make test | make audit | make bench | make gpu-test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo-out

.PHONY: install demo test audit constraints bench gpu-test clean

# pip-audit runs in a venv of its own (inside .venv/, so git ignores it), so that it and
# its dependencies are not part of what constraints.txt pins and audits.
AUDIT_VENV := $(VENV)/audit
PIP_AUDIT_VERSION := 2.10.1
AUDIT_SERVICE ?= pypi

# constraints.txt pins every package the test install brings (make constraints writes it)
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m facefleet.samples tests/data $(DEMO)/sample.mp4 --frames 300
	$(BIN)/facefleet run $(DEMO)/sample.mp4 -o $(DEMO)/sample_anonymized.mp4
	@echo "input:  $(DEMO)/sample.mp4"
	@echo "output: $(DEMO)/sample_anonymized.mp4"

test: install
	$(BIN)/python -m pytest -q

# After upgrading packages in .venv on purpose: pin what is installed now.
constraints: install
	{ echo "# Exact versions for 'pip install -c constraints.txt -e .[test]' (make install, CI)."; \
	  echo "# Written by 'make constraints' (pip freeze of .venv); audited by 'make audit'."; \
	  $(BIN)/pip freeze --exclude-editable | grep -v '^-e '; } > constraints.txt

$(AUDIT_VENV)/.installed:
	$(PYTHON) -m venv $(AUDIT_VENV)
	$(AUDIT_VENV)/bin/pip install -q pip-audit==$(PIP_AUDIT_VERSION)
	touch $@

# Known vulnerabilities in the pinned versions. Fails when one has a fixed version to move
# to; prints, without failing, one with no fix. Where pip-audit gets no answer, tools/audit.py
# checks the pins that are their project's latest release against PyPI's project JSON and
# names the rest as not checked; with no answer at all it says "audit NOT done" and does
# not fail CI. See docs/security.md.
audit: $(AUDIT_VENV)/.installed
	@rm -f $(AUDIT_VENV)/report.json
	@$(AUDIT_VENV)/bin/pip-audit -r constraints.txt --no-deps --disable-pip --progress-spinner off \
	  -s $(AUDIT_SERVICE) --timeout 20 -f json -o $(AUDIT_VENV)/report.json 2>$(AUDIT_VENV)/stderr.txt; \
	  $(AUDIT_VENV)/bin/python tools/audit.py constraints.txt --report $(AUDIT_VENV)/report.json --errors $(AUDIT_VENV)/stderr.txt

bench: install
	$(BIN)/python bench/anonymize_vs_deface.py

gpu-test: install
	$(BIN)/python -m pytest -q -m gpu

clean:
	rm -rf $(DEMO) .pytest_cache build *.egg-info
