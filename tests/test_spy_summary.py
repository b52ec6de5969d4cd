"""bench/spy_summary.py: a py-spy raw profile summed per process, thread kind and function."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "spy_summary.py"


def load():
    spec = importlib.util.spec_from_file_location("spy_summary", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# as py-spy writes it with --threads --subprocesses: one stack per record, the count last;
# a process's command line may hold newlines
RAW = (
    'process 10:"python3 -m facefleet run a.mp4";thread (0x1): MainThread;main (cli.py:5) 10\n'
    'process 11:"ray::GpuWorker";thread (0x2): encode;run (chunk.py:9);write (encode.py:216) 30\n'
    'process 11:"ray::GpuWorker";thread (0x3): encode;run (chunk.py:9);write (encode.py:216) 20\n'
    'process 11:"ray::GpuWorker";thread (0x4): Dummy-7;blurred (anonymize.py:78) 25\n'
    'process 12:"python3 -c import x\ny = 1";thread (0x5): MainThread 15\n'
)


def test_records_keep_process_thread_frames_and_count():
    spy = load()
    records = spy.parse(RAW)
    assert len(records) == 5
    assert records[1] == ("11 ray::GpuWorker", "encode", ["run (chunk.py:9)", "write (encode.py:216)"], 30)
    assert records[4][0] == "12 python3 -c import x y = 1" and records[4][2] == [] and records[4][3] == 15


def test_seconds_per_process_thread_kind_and_innermost_function():
    spy = load()
    text = spy.summarize(spy.parse(RAW), rate=10.0, top=10, wall=10.0)
    lines = text.splitlines()
    # 75 samples of the worker at 10 Hz: 7.5 s, 75 % of 10 s; threads of a kind are summed
    assert "    7.50 s   75.0 %  11 ray::GpuWorker" in lines
    assert "    5.00 s   50.0 %  11 ray::GpuWorker | encode" in lines
    assert "    5.00 s   50.0 %  11 ray::GpuWorker | encode | write (encode.py:216)" in lines
    assert "    2.50 s   25.0 %  11 ray::GpuWorker | Dummy | blurred (anonymize.py:78)" in lines
    assert "    1.50 s   15.0 %  12 python3 -c import x y = 1 | MainThread | (no Python frame)" in lines
