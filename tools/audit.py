#!/usr/bin/env python3
"""make audit's verdict on the pinned dependencies (constraints.txt).

First source: pip-audit's JSON report (PyPI's per-version JSON API, or OSV). Where
pip-audit could look up none of the pins (no report, or every pin skipped: an offline
machine, or a mirror that answers PyPI's per-version API with 404), the pins are looked
up in PyPI's project JSON (`/pypi/NAME/json`) instead. That answer lists the known
vulnerabilities of the project's latest release only, so this second source checks just
the pins that are that release; every other pin is named as not checked.

Exit status 1 when a pin has a known vulnerability with a newer version that fixes it;
a vulnerability without a fix is printed and does not fail; "audit NOT done" (exit 0)
when neither source checked anything: a missing answer is reported, never taken as clean.

    python tools/audit.py constraints.txt [--report R.json --errors STDERR] [--index URL]

Runs with the audit venv's Python (it needs `packaging`, which pip-audit brings).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

PYPI_JSON = "https://pypi.org/pypi"


@dataclass
class Verdict:
    checked: list[str] = field(default_factory=list)  # "name version"
    fixable: list[str] = field(default_factory=list)  # one line per vulnerability
    unfixed: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)  # "name version (why)"
    source: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.fixable)

    def lines(self) -> list[str]:
        out = [f"known vulnerability without a fix (not failing): {line}" for line in self.unfixed]
        out += [f"VULNERABLE: {line}" for line in self.fixable]
        total = len(self.checked) + len(self.not_checked)
        if not self.checked:
            why = "; ".join(self.not_checked[:3]) + (" ..." if len(self.not_checked) > 3 else "")
            return out + [f"audit NOT done: none of the {total} pins could be looked up ({why})"]
        if self.not_checked:
            out.append(f"audit: {len(self.not_checked)} of {total} pins not checked: {', '.join(self.not_checked)}")
        if self.fixable:
            out.append(f"audit FAILED ({self.source}): {len(self.fixable)} known vulnerabilities with a fixed version; raise those pins")
        else:
            out.append(f"audit ok ({self.source}): {len(self.checked)} of {total} pins checked, no known vulnerability with a fix")
        return out


def read_pins(text: str) -> list[tuple[str, str]]:
    """(name, version) of every `name==version` line of a constraints file."""
    pins = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins.append((name.strip(), version.split(";", 1)[0].strip()))
    return pins


def from_pip_audit(report: dict) -> Verdict:
    """The verdict of pip-audit's JSON report (`-f json`)."""
    verdict = Verdict(source="pip-audit")
    for dep in report.get("dependencies", []):
        pin = f"{dep['name']} {dep.get('version', '?')}"
        if "skip_reason" in dep:
            verdict.not_checked.append(f"{pin} ({dep['skip_reason']})")
            continue
        verdict.checked.append(pin)
        for vuln in dep.get("vulns", []):
            fixes = vuln.get("fix_versions") or []
            if fixes:
                verdict.fixable.append(f"{pin} {vuln['id']}: fixed in {', '.join(fixes)}")
            else:
                verdict.unfixed.append(f"{pin} {vuln['id']}")
    return verdict


def _newer(versions: list[str], pinned: str) -> list[str]:
    def parse(v: str) -> Version | None:
        try:
            return Version(v)
        except InvalidVersion:
            return None

    base = parse(pinned)
    return [v for v in versions if base is None or (parse(v) is not None and parse(v) > base)]


def _python_note(project: dict) -> str:
    """", which needs Python >=3.12" when the latest release cannot install on this Python."""
    wanted = project["info"].get("requires_python") or ""
    try:
        if wanted and not SpecifierSet(wanted).contains(".".join(map(str, sys.version_info[:3]))):
            return f", which needs Python {wanted}"
    except InvalidSpecifier:
        pass
    return ""


def from_latest_release(pins: list[tuple[str, str]], fetch: Callable[[str], dict]) -> Verdict:
    """Check each pin that is its project's latest release against the vulnerabilities that
    `fetch(name)` (the project's JSON) lists for that release."""
    verdict = Verdict(source="PyPI project JSON, latest releases")
    for name, version in pins:
        pin = f"{name} {version}"
        try:
            project = fetch(name)
            latest = project["info"]["version"]
            vulns = project.get("vulnerabilities")
        except Exception as exc:  # unreachable, not found, not JSON: this pin is not checked
            verdict.not_checked.append(f"{pin} ({type(exc).__name__}: {str(exc)[:80]})")
            continue
        if vulns is None:
            verdict.not_checked.append(f"{pin} (the registry gives no vulnerability data)")
            continue
        if latest != version:
            verdict.not_checked.append(f"{pin} (not the latest release, {latest}{_python_note(project)})")
            continue
        verdict.checked.append(pin)
        for vuln in vulns:
            if vuln.get("withdrawn"):
                continue
            fixes = _newer(list(vuln.get("fixed_in") or []), version)
            if fixes:
                verdict.fixable.append(f"{pin} {vuln.get('id')}: fixed in {', '.join(fixes)}")
            else:
                verdict.unfixed.append(f"{pin} {vuln.get('id')}")
    return verdict


def fetch_project(index: str, timeout: float = 20.0) -> Callable[[str], dict]:
    def fetch(name: str) -> dict:
        with urllib.request.urlopen(f"{index.rstrip('/')}/{name}/json", timeout=timeout) as response:
            return json.load(response)

    return fetch


def audit(pins: list[tuple[str, str]], report: dict | None, fetch: Callable[[str], dict]) -> Verdict:
    """pip-audit's verdict where it checked anything, else the latest-release check."""
    if report is not None:
        verdict = from_pip_audit(report)
        if verdict.checked:
            return verdict
    return from_latest_release(pins, fetch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("constraints")
    parser.add_argument("--report", help="pip-audit's JSON report (missing or empty: it got no answer)")
    parser.add_argument("--errors", help="pip-audit's stderr, quoted when it got no answer")
    parser.add_argument("--index", default=PYPI_JSON, help="where /NAME/json is asked (default %(default)s)")
    args = parser.parse_args(argv)
    pins = read_pins(open(args.constraints).read())
    report = None
    if args.report:
        try:
            report = json.load(open(args.report))
        except (OSError, ValueError):
            errors = open(args.errors).read().strip().splitlines() if args.errors else []
            print(f"pip-audit got no answer ({(errors[-1] if errors else 'no report')[:300]}); asking {args.index}")
    verdict = audit(pins, report, fetch_project(args.index))
    if report is not None and verdict.source != "pip-audit":
        print(f"pip-audit looked up none of the pins; asking {args.index}")
    print("\n".join(verdict.lines()))
    return 1 if verdict.failed else 0


if __name__ == "__main__":
    sys.exit(main())
