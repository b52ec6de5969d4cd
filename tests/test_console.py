"""The progress bars of `facefleet run`: a resumed input's frames done before count as done,
not toward this run's rate."""

from __future__ import annotations

import io

from rich.console import Console

from facefleet.report.console import FpsColumn, RichProgress


def bars() -> RichProgress:
    return RichProgress(Console(file=io.StringIO(), force_terminal=False), enabled=False)


def test_a_resumed_input_starts_at_its_kept_frames_and_its_rate_counts_only_new_ones():
    progress = bars()
    progress.started("j", "/videos/clip.mp4", 100, done_before=60)
    task = progress._progress.tasks[0]
    assert (task.completed, task.fields["kept"], task.started) == (60, 60, False)
    progress.advanced("j", 60)  # nothing new yet: the clock has not started
    assert not task.started
    progress.advanced("j", 70)
    assert task.started and task.completed == 70
    task.start_time = task.get_time() - 2.0  # as if this run had worked 2 s
    rate = float(FpsColumn().render(task).plain.split()[0])
    assert abs(rate - 5.0) < 0.1  # 10 new frames in 2 s, not 70


def test_a_fresh_input_counts_every_frame():
    progress = bars()
    progress.started("j", "/videos/clip.mp4", 100)
    progress.advanced("j", 40)
    task = progress._progress.tasks[0]
    task.start_time = task.get_time() - 4.0
    assert abs(float(FpsColumn().render(task).plain.split()[0]) - 10.0) < 0.1
