"""Terminal output: a progress bar per job while it runs, one summary line per input after."""

from __future__ import annotations

import re
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
from rich.markup import escape
from rich.text import Text

from facefleet.errors import shown
from facefleet.jobs.runner import JobOutcome


class FpsColumn(ProgressColumn):
    """Frames per second of this run: frames done before a resume (field `kept`) count
    toward the bar, not toward the rate."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        fresh = task.completed - task.fields.get("kept", 0)
        fps = fresh / elapsed if elapsed > 0 else 0.0
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
        self.outcomes: dict[str, JobOutcome] = {}  # every job that ended, by id

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def started(self, job_id: str, input_uri: str, total_frames: int, done_before: int = 0) -> None:
        """`done_before`: frames of chunks an earlier run finished (a resume): shown as done,
        left out of the rate and of the ETA's speed (rich samples only later updates)."""
        name = shown(Path(input_uri).name)[:40]
        self._tasks[job_id] = self._progress.add_task(
            escape(name), total=total_frames, completed=done_before, start=False, kept=done_before
        )

    def advanced(self, job_id: str, frames_done: int) -> None:
        task = self._tasks.get(job_id)
        if task is None:
            return
        shown_task = self._progress.tasks[task]
        if frames_done > shown_task.fields["kept"] and not shown_task.started:
            self._progress.start_task(task)
        self._progress.update(task, completed=frames_done)

    def ended(self, outcome: JobOutcome) -> None:
        self.outcomes[outcome.job_id] = outcome
        task = self._tasks.get(outcome.job_id)
        if task is not None:
            if outcome.ok:
                self._progress.update(task, completed=outcome.frames)
            self._progress.stop_task(task)


_LINE_BREAKS = re.compile(r"\s*[^\S ]\s*")  # a run of blanks holding anything but a space: a newline, a tab


def one_line(text: str) -> str:
    """`text` on one line: each run of blanks that holds a line break or a tab becomes one
    space and other control characters are escaped; runs of plain spaces stay as they are
    (a path in the text may hold them)."""
    return shown(_LINE_BREAKS.sub(" ", text.strip("\r\n\t\v\f")).rstrip())


def summary_line(outcome: JobOutcome) -> str:
    """One line per input: the input named once, as `errors.shown` writes it (a newline or
    tab in a file name escaped), then the output and numbers, or the reason it failed."""
    source = shown(outcome.input_uri)
    if not outcome.ok:
        error = outcome.error or ""
        if outcome.input_uri != source:  # a message that quotes the raw path: name it as shown
            error = error.replace(outcome.input_uri, source)
        error = one_line(error)
        named = error if error.startswith(source) else f"{source}: {error}"
        return f"FAILED {named}"
    providers = ",".join(p.replace("ExecutionProvider", "") for p in outcome.providers) or "-"
    trusted = sorted(name for name, how in outcome.models.items() if how == "trusted")
    return (
        f"ok  {source} -> {shown(outcome.output_uri)}: {outcome.frames} frames, {outcome.faces} faces, "
        + (f"{outcome.kept_frames} of the frames done before the resume, " if outcome.kept_frames else "")
        + f"{outcome.seconds:.1f} s, {outcome.fps:.1f} fps, provider {providers}"
        + (f", trusted (unchecked) model: {', '.join(trusted)}" if trusted else "")
    )


def print_summary(outcomes: list[JobOutcome], console: Console | None = None) -> None:
    console = console or Console()
    for outcome in outcomes:
        console.print(summary_line(outcome), markup=False, highlight=False, soft_wrap=True)
    failed = sum(not o.ok for o in outcomes)
    if len(outcomes) > 1:
        console.print(f"{len(outcomes) - failed} of {len(outcomes)} inputs done, {failed} failed", highlight=False)
