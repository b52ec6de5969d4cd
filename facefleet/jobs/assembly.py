"""A job's video output assembled while its chunks run.

Without this, a video job concatenates its segments and the input's audio into the output
once its last chunk is done: 0.42-0.53 s after the last chunk of a 1800-frame 1080p job
on the H100 machine, 5 % of the job. Here a thread reads each segment as soon as it and
the ones before it are done (facefleet.media.assemble.SegmentFeed), so that at the end
only the last segments are left to copy.

A runner streams at most MAX_STREAMED jobs at once (each holds a thread, the input, a
segment and the temporary output open, and a partial copy of the output on disk until the
job ends; a directory of many inputs runs many jobs at once); the others are assembled at
their end.

The output appears only when the runner says so (`finish`, once every chunk is done);
`abort` (the job failed or was stopped) leaves nothing. Until then the temporary file is
in the job's work directory, which goes with the job, never beside the output, so a
killed run leaves no stray file there (a resume writes it again). Moving it into place
is a rename: jobs whose work directory is on another filesystem than the output, outputs
in object storage, inputs in object storage (their audio would be read over a connection
held open, idle, for the whole job), jobs that also write tables (all of a job's
outputs, or none), and jobs whose work directory is outside the output's directory
(`serve` keeps it in the state dir) when that directory gives its files its group
(setgid) or a default ACL, which a file made elsewhere would miss, are assembled at the
end as before (`streamed_assembly` returns None for them).
"""

from __future__ import annotations

import threading
from pathlib import Path

from facefleet.media.assemble import SegmentFeed, assemble
from facefleet.media.files import passes_on_ownership, same_filesystem
from facefleet.media.probe import VideoInfo
from facefleet.media.storage import is_remote, local_path, output_file

TMP_DIR = "output"  # in the job's work directory: the temporary output, named as the output
MAX_STREAMED = 4  # jobs of one runner assembled while they run; later ones at their end


class StreamedAssembly:
    """One job's output, assembled by a thread as its segments become ready."""

    def __init__(self, info: VideoInfo, segments: list[Path], output_uri: str, workdir: Path):
        self._info = info
        self._output_uri = output_uri
        self.tmp = workdir / TMP_DIR / Path(local_path(output_uri)).name
        self.feed = SegmentFeed(segments)  # a chunk's index is its place in the job's plan
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def ready(self, index: int) -> None:
        """Chunk `index`'s segment is written; the thread starts with the first one."""
        self.feed.mark_ready(index)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="assemble-output", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self.tmp.parent.mkdir(exist_ok=True)
            with output_file(self._output_uri, local_tmp=self.tmp) as tmp:
                assemble(self._info, self.feed, tmp)
                self.feed.decided()  # published on commit; removed on abort
        except BaseException as exc:
            self._error = exc

    def finish(self) -> None:
        """Every segment is ready: finish the output and put it in place (or raise why not)."""
        if self._thread is None or not self.feed.all_ready():
            raise RuntimeError("the output's assembly was told to finish before every segment was ready")
        self.feed.commit()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self, reason: str) -> None:
        """Stop; nothing is published (after `finish`, nothing changes)."""
        self.feed.abort(reason)
        if self._thread is not None:
            self._thread.join()


def streamed_assembly(
    info: VideoInfo | None, segments: list[Path], output_uri: str, workdir: Path, writes_table: bool
) -> StreamedAssembly | None:
    """A streamed assembly for a video job whose output can be renamed into place from
    its work directory; None where the output is assembled at the end (see the module)."""
    if info is None or not segments or writes_table or is_remote(output_uri) or is_remote(info.uri):
        return None
    out_dir = Path(local_path(output_uri)).parent
    if not same_filesystem(workdir, out_dir):
        return None
    if not workdir.absolute().is_relative_to(out_dir.absolute()) and passes_on_ownership(out_dir):
        # made in the work dir (the state dir's, for `serve`), the output would miss the
        # group or default ACL that the output's directory gives the files made in it
        return None
    return StreamedAssembly(info, segments, output_uri, workdir)
