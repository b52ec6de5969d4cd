"""Terminal output: a progress bar per job while it runs, one summary line per input after."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from facefleet.jobs.runner import JobOutcome


class FpsColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        fps = task.completed / elapsed if elapsed > 0 else 0.0
        return Text(f"{fps:6.1f} fps", style="progress.data.speed")


class RichProgress:
    """Shows frames done / total, fps and ETA per job on stderr."""

    def __init__(self, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("frames"),
            FpsColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def started(self, job_id: str, input_uri: str, total_frames: int) -> None:
        name = Path(input_uri).name
        self._tasks[job_id] = self._progress.add_task(name[:40], total=total_frames, start=False)

    def advanced(self, job_id: str, frames_done: int) -> None:
        task = self._tasks.get(job_id)
        if task is None:
            return
        if frames_done and not self._progress.tasks[task].started:
            self._progress.start_task(task)
        self._progress.update(task, completed=frames_done)

    def ended(self, outcome: JobOutcome) -> None:
        task = self._tasks.get(outcome.job_id)
        if task is not None:
            if outcome.ok:
                self._progress.update(task, completed=outcome.frames)
            self._progress.stop_task(task)


def summary_line(outcome: JobOutcome) -> str:
    if not outcome.ok:
        error = " ".join((outcome.error or "").split())  # one line, whatever the error said
        named = error if error.startswith(outcome.input_uri) else f"{outcome.input_uri}: {error}"
        return f"FAILED {named}"
    providers = ",".join(p.replace("ExecutionProvider", "") for p in outcome.providers) or "-"
    trusted = sorted(name for name, how in outcome.models.items() if how == "trusted")
    return (
        f"ok  {outcome.input_uri} -> {outcome.output_uri}: {outcome.frames} frames, {outcome.faces} faces, "
        f"{outcome.seconds:.1f} s, {outcome.fps:.1f} fps, provider {providers}"
        + (f", trusted (unchecked) model: {', '.join(trusted)}" if trusted else "")
    )


def print_summary(outcomes: list[JobOutcome], console: Console | None = None) -> None:
    console = console or Console()
    for outcome in outcomes:
        console.print(summary_line(outcome), markup=False, highlight=False, soft_wrap=True)
    failed = sum(not o.ok for o in outcomes)
    if len(outcomes) > 1:
        console.print(f"{len(outcomes) - failed} of {len(outcomes)} inputs done, {failed} failed", highlight=False)
