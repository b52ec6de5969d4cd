"""Issue 8, inputs: a generated corpus of hostile inputs through one `facefleet run`.

About a hundred inputs (tests/hostile.py: truncated at many cut points, bit flips, not
media, audio only, timestamps that jump or go backwards, variable frame rate, 10-bit,
yuv444, rotation, 16x16 to 7680x4320 and odd sizes, 1000 frames with one corrupt or
missing, awkward images, paths with spaces, quotes, tabs, newlines and non-ASCII, and a
few fuzzing mutants) go through the real command on the embedded Ray with CPU workers,
in one run, so that one input's failure is seen not to stop the others. Per input:
a correct output (frames and timestamps as probed from the input) or one line naming
the input and the reason; nothing at the output path of a failure; no temporary files
left; the exit code says whether anything failed. The run has a hard timeout (a hang
fails the test instead of stalling the suite).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import pytest
from hostile import Entry, build_corpus
from localrun import run_local

from facefleet.errors import FacefleetError, shown
from facefleet.jobs.inputs import resolve_outputs
from facefleet.jobs.spec import JobSpec
from facefleet.media.probe import probe_video
from facefleet.pipeline.spec import PipelineSpec

CLI_TIMEOUT_S = 150
TMP_MARKS = (".facefleet-", "facefleet-tmp")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Entry]:
    return build_corpus(tmp_path_factory.mktemp("hostile") / "in put")


@pytest.fixture(scope="module")
def cli_run(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-run")
    out_dir = root / "out dir"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONIOENCODING": "utf-8"}
    args = [str(e.path) for e in corpus] + ["-o", str(out_dir), "-q", "--detect-size", "160"]
    proc = subprocess.run(
        [sys.executable, "-m", "facefleet", "run", *args],
        cwd=root, env=env, capture_output=True, text=True, encoding="utf-8", timeout=CLI_TIMEOUT_S,
    )
    return proc, out_dir


def output_of(entry: Entry, out_dir: Path) -> Path:
    """Named after the input; a container facefleet cannot write (.ts) becomes .mp4."""
    return Path(resolve_outputs([str(entry.path)], str(out_dir) + "/")[0][1])


def outcome_of(entry: Entry, stdout: str) -> tuple[str, str]:
    """("ok"|"failed", the rest of its line after the path) from the command's summary,
    which names the path as errors.shown writes it (a newline or tab escaped)."""
    path = re.escape(shown(str(entry.path)))
    ok = list(re.finditer(rf"^ok  {path} -> ", stdout, re.M))
    failed = list(re.finditer(rf"^FAILED {path}: ", stdout, re.M))
    assert len(ok) + len(failed) == 1, f"{entry.name!r}: {len(ok)} ok and {len(failed)} FAILED lines"
    m = (ok or failed)[0]
    return ("ok" if ok else "failed"), stdout[m.end():].split("\n", 1)[0]


def displayed_seconds(path: Path) -> list[Fraction]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return [frame.pts * stream.time_base for frame in c.decode(stream)]


def expected_for(entry: Entry) -> str:
    return entry.expect


def test_cli_run_ends_and_names_every_input(corpus, cli_run):
    proc, _ = cli_run
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text[-3000:]
    failed = sum(outcome_of(e, proc.stdout)[0] == "failed" for e in corpus)
    assert f"{len(corpus) - failed} of {len(corpus)} inputs done, {failed} failed" in proc.stdout
    assert proc.returncode == (1 if failed else 0), text[-3000:]


@pytest.mark.parametrize("kind", ["ok", "fail", "either"])
def test_each_input_gives_an_output_or_a_reason(corpus, cli_run, kind):
    proc, out_dir = cli_run
    problems = []
    for entry in corpus:
        expect = expected_for(entry)
        if expect != kind:
            continue
        state, line = outcome_of(entry, proc.stdout)
        output = output_of(entry, out_dir)
        if state == "failed":
            reason = entry.reason
            if expect == "ok":
                problems.append(f"{entry.name!r} should work: {line}")
            elif not re.search(reason or ".", line):
                problems.append(f"{entry.name!r}: {line!r} does not say {reason!r}")
            if output.exists():
                problems.append(f"{entry.name!r} failed but left {output}")
            continue
        if expect == "fail":
            problems.append(f"{entry.name!r} should fail: {line}")
            continue
        if not output.is_file():
            problems.append(f"{entry.name!r}: ok but no output")
        elif not entry.image:
            info = probe_video(str(entry.path))
            want = [p * info.time_base for p in info.frame_pts]
            got = displayed_seconds(output)
            if entry.frames is not None and len(want) != entry.frames:
                problems.append(f"{entry.name!r}: probe found {len(want)} frames, the file has {entry.frames}")
            if len(got) != len(want):
                problems.append(f"{entry.name!r}: {len(got)} output frames, input has {len(want)}")
            elif max(abs(a - b) for a, b in zip(got, want)) > Fraction(1, 1000):
                problems.append(f"{entry.name!r}: output timestamps differ from the input's")
    assert not problems, "\n".join(problems)


def test_failures_are_one_line_naming_the_input(corpus, cli_run):
    """Where the path is printable: `FAILED <path>: <reason>` and nothing else about it."""
    proc, _ = cli_run
    for entry in corpus:
        if not str(entry.path).isprintable():
            continue
        state, line = outcome_of(entry, proc.stdout)
        assert state == "ok" or str(entry.path) not in line, line  # named once
        assert len(line) < 400 and "Errno" not in line and "Traceback" not in line, line


def test_awkward_paths_are_named_once_on_one_line(corpus, cli_run):
    proc, _ = cli_run
    for entry in corpus:
        if entry.kind != "awkward paths":
            continue
        lines = [line for line in proc.stdout.splitlines() if line.startswith(("ok  ", "FAILED ")) and entry.path.name[:8] in line]
        named = [line for line in lines if shown(str(entry.path)) in line]
        assert len(named) == 1 and named[0].count(entry.path.name[:8]) == 1 + (named[0].startswith("ok") and 1), lines


def test_nothing_partial_or_temporary_is_left(corpus, cli_run):
    proc, out_dir = cli_run
    written = {p.name for p in out_dir.iterdir()}
    expected = {output_of(e, out_dir).name for e in corpus if outcome_of(e, proc.stdout)[0] == "ok"}
    assert written == expected
    for root in (out_dir, corpus[0].path.parent):
        left = [p for p in root.rglob("*") if any(mark in p.name for mark in TMP_MARKS)]
        assert left == [], left


@pytest.mark.parametrize("name", ["backwards (ts concat).ts", "backwards short (ts concat).ts", "repeated (ts concat).ts", "ts plain.ts"])
def test_ts_inputs_without_the_command(corpus, tmp_path, name):
    """The .ts inputs the command cannot name an output for: the worker's path, to .mp4."""
    entry = next(e for e in corpus if e.name == name)
    output = tmp_path / "out.mp4"
    try:
        job = run_local(JobSpec("ts", str(entry.path), str(output), pipeline=PipelineSpec(detect_size=160)))
    except FacefleetError as exc:
        assert entry.expect != "ok", exc
        assert re.search(entry.reason, str(exc)) and str(entry.path) in str(exc), exc
        assert not output.exists()
        return
    assert entry.expect != "fail"
    assert sum(r.frames for r in job.results.values()) == len(displayed_seconds(output)) == len(job.info.frame_pts)
