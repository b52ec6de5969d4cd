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
# to; prints, without failing, one with no fix, and says so when the vulnerability service
# cannot be reached or knows none of the versions (offline: the audit is not done, and
# does not fail CI). See docs/security.md.
audit: $(AUDIT_VENV)/.installed
	@rm -f $(AUDIT_VENV)/report.json
	@$(AUDIT_VENV)/bin/pip-audit -r constraints.txt --no-deps --disable-pip --progress-spinner off \
	  -s $(AUDIT_SERVICE) --timeout 20 -f json -o $(AUDIT_VENV)/report.json 2>$(AUDIT_VENV)/stderr.txt; \
	  $(AUDIT_VENV)/bin/python -c "$$AUDIT_VERDICT" $(AUDIT_VENV)/report.json $(AUDIT_VENV)/stderr.txt

bench: install
	$(BIN)/python bench/anonymize_vs_deface.py

gpu-test: install
	$(BIN)/python -m pytest -q -m gpu

clean:
	rm -rf $(DEMO) .pytest_cache build *.egg-info

# make audit's verdict from pip-audit's JSON report (argv: report, pip-audit's stderr)
define AUDIT_VERDICT
import json, sys
report, errors = sys.argv[1], open(sys.argv[2]).read().strip()
try:
    deps = json.load(open(report))["dependencies"]
except (OSError, ValueError, KeyError):  # pip-audit stopped before its report: the service did not answer
    last = errors.splitlines()[-1] if errors else "no report"
    print(f"audit NOT done: pip-audit got no answer from the vulnerability service ({last[:300]})")
    sys.exit(0)
looked = [d for d in deps if "skip_reason" not in d]
fixable = [(d, v) for d in looked for v in d.get("vulns", []) if v.get("fix_versions")]
unfixed = [(d, v) for d in looked for v in d.get("vulns", []) if not v.get("fix_versions")]
for d, v in unfixed:
    print(f"known vulnerability without a fix (not failing): {d['name']} {d['version']} {v['id']}")
for d, v in fixable:
    print(f"VULNERABLE: {d['name']} {d['version']} {v['id']}: fixed in {', '.join(v['fix_versions'])}")
if not looked:
    print(f"audit NOT done: the vulnerability service knows none of the {len(deps)} pinned versions "
          "(offline, or a mirror without its API): nothing was checked")
elif len(looked) < len(deps):
    print(f"audit: {len(deps) - len(looked)} of {len(deps)} pinned packages could not be looked up")
if fixable:
    print(f"audit FAILED: {len(fixable)} known vulnerabilities with a fixed version; raise those pins")
    sys.exit(1)
if looked:
    print(f"audit ok: {len(looked)} pinned packages, no known vulnerability with a fix")
endef
export AUDIT_VERDICT
