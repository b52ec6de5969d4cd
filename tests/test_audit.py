"""make audit's verdict (tools/audit.py): pip-audit's report, else PyPI's project JSON for
the pins that are their project's latest release."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("audit_tool", ROOT / "tools" / "audit.py")
audit_tool = importlib.util.module_from_spec(_spec)
sys.modules["audit_tool"] = audit_tool  # dataclasses look their module up
_spec.loader.exec_module(audit_tool)


def project(latest: str, vulns: list[dict] | None) -> dict:
    return {"info": {"version": latest}, "vulnerabilities": vulns}


def test_pip_audit_report_fails_on_a_vulnerability_with_a_fix_only():
    report = {
        "dependencies": [
            {"name": "a", "version": "1.0", "vulns": [{"id": "PYSEC-1", "fix_versions": ["1.1"]}]},
            {"name": "b", "version": "2.0", "vulns": [{"id": "GHSA-2", "fix_versions": []}]},
            {"name": "c", "version": "3.0", "skip_reason": "not on PyPI"},
        ]
    }
    verdict = audit_tool.audit([], report, fetch=lambda name: pytest.fail("pip-audit answered; no fallback"))
    assert verdict.failed and verdict.source == "pip-audit"
    assert verdict.fixable == ["a 1.0 PYSEC-1: fixed in 1.1"]
    assert verdict.unfixed == ["b 2.0 GHSA-2"]
    assert verdict.not_checked == ["c 3.0 (not on PyPI)"]
    assert any(line.startswith("audit FAILED") for line in verdict.lines())


def test_fallback_checks_latest_releases_and_names_the_rest():
    """pip-audit skipped every pin (a mirror answering 404): the project JSON decides."""
    report = {"dependencies": [{"name": n, "version": v, "skip_reason": "404"} for n, v in [("a", "1.0"), ("b", "2.0")]]}
    projects = {
        "a": project("1.0", [{"id": "PYSEC-9", "fixed_in": ["1.0.1"]}, {"id": "OLD", "fixed_in": ["0.9"]}]),
        "b": project("2.0", [{"id": "GONE", "fixed_in": ["2.1"], "withdrawn": "2026-01-01"}]),
        "c": project("4.0", []),
    }

    def fetch(name):
        if name == "d":
            raise OSError("unreachable")
        return projects[name]

    pins = [("a", "1.0"), ("b", "2.0"), ("c", "3.0"), ("d", "1.0")]
    verdict = audit_tool.audit(pins, report, fetch)
    assert verdict.source.startswith("PyPI project JSON")
    assert verdict.checked == ["a 1.0", "b 2.0"]
    assert verdict.fixable == ["a 1.0 PYSEC-9: fixed in 1.0.1"]  # a fix older than the pin is no fix for it
    assert verdict.unfixed == ["a 1.0 OLD"]
    assert verdict.not_checked[0] == "c 3.0 (not the latest release, 4.0)"
    assert verdict.not_checked[1].startswith("d 1.0 (OSError: unreachable")
    assert verdict.failed


def test_a_latest_release_this_python_cannot_install_is_named():
    newer_python = f">={sys.version_info[0]}.{sys.version_info[1] + 1}"
    projects = {
        "a": {"info": {"version": "19.0", "requires_python": newer_python}, "vulnerabilities": []},
        "b": {"info": {"version": "2.0", "requires_python": ">=3.8"}, "vulnerabilities": []},
    }
    verdict = audit_tool.from_latest_release([("a", "18.1"), ("b", "1.0")], projects.__getitem__)
    assert verdict.not_checked == [
        f"a 18.1 (not the latest release, 19.0, which needs Python {newer_python})",
        "b 1.0 (not the latest release, 2.0)",
    ]


def test_no_vulnerability_data_is_not_taken_as_clean():
    verdict = audit_tool.from_latest_release([("a", "1.0")], lambda name: {"info": {"version": "1.0"}})
    assert not verdict.checked and not verdict.failed
    assert verdict.lines()[-1].startswith("audit NOT done")


def test_read_pins_skips_comments_and_options():
    text = "# header\n-e .\nnumpy==2.4.6\nav==18.1.0  # video\nfoo==1.0 ; python_version < '3.12'\nbar>=1\n"
    assert audit_tool.read_pins(text) == [("numpy", "2.4.6"), ("av", "18.1.0"), ("foo", "1.0")]


@pytest.fixture
def index(tmp_path):
    """A PyPI-like /NAME/json server on 127.0.0.1, stopped after the test."""
    root = tmp_path / "index"

    def publish(name, body):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "json").write_text(json.dumps(body))

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", publish
    finally:
        server.shutdown()
        server.server_close()


def test_main_exit_status_from_the_index(tmp_path, index, capsys):
    url, publish = index
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("good==1.0\nbad==2.0\n")
    publish("good", project("1.0", []))
    publish("bad", project("2.0", [{"id": "PYSEC-7", "fixed_in": ["2.0.1"]}]))
    missing = tmp_path / "no-report.json"  # pip-audit wrote none: it got no answer
    assert audit_tool.main([str(constraints), "--report", str(missing), "--index", url]) == 1
    out = capsys.readouterr().out
    assert "VULNERABLE: bad 2.0 PYSEC-7: fixed in 2.0.1" in out and "audit FAILED" in out

    publish("bad", project("2.0", []))
    assert audit_tool.main([str(constraints), "--report", str(missing), "--index", url]) == 0
    assert "audit ok (PyPI project JSON, latest releases): 2 of 2 pins checked" in capsys.readouterr().out


def test_main_unreachable_index_is_audit_not_done(tmp_path, capsys):
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("good==1.0\n")
    assert audit_tool.main([str(constraints), "--index", "http://127.0.0.1:9"]) == 0  # nothing listens on port 9
    assert "audit NOT done" in capsys.readouterr().out
