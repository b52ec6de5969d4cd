"""Issue 8, fuzzing (short form): seeded mutations of a small valid mp4.

Each mutant goes through what the driver and a worker do with an input (probe, plan into
4-frame chunks, decode every chunk's exact range). Allowed: success, or a FacefleetError
whose message is one line naming the input. Anything else (another exception type, a
message with a traceback or several lines) is a crash; the test's timeout catches a hang.
A few mutants also go through the whole command, in tests/test_hostile_inputs.py.
The long form is `bench/fuzz_inputs.py --iterations N --seed S`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hostile import MUTATIONS, fuzz_one, mutate, small_mp4

ITERATIONS = 60
SEED = 20261108


@pytest.mark.timeout(60)
def test_mutants_end_in_success_or_one_clean_line(tmp_path):
    base = small_mp4(tmp_path / "base.mp4", frames=12).read_bytes()
    seen: Counter = Counter()
    crashes = []
    for i in range(ITERATIONS):
        rng = np.random.default_rng([SEED, i])
        kind, data = mutate(base, rng, MUTATIONS[i % len(MUTATIONS)])
        path = tmp_path / f"mutant {i}.mp4"
        path.write_bytes(data)
        state, message = fuzz_one(path, tmp_path)
        seen[state] += 1
        if state == "crash":
            crashes.append(f"#{i} {kind}: {message}")
        elif state == "error":
            assert str(path) in message and "\n" not in message, message
        path.unlink()
    assert crashes == [], "\n".join(crashes)
    assert seen["ok"] + seen["error"] == ITERATIONS
    assert seen["error"] > 0  # the mutations do damage


def test_unmutated_base_decodes_whole(tmp_path):
    path = small_mp4(tmp_path / "base.mp4", frames=12)
    assert fuzz_one(path, tmp_path) == ("ok", "12 frames")
