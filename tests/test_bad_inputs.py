"""Bad input gets a clear answer; awkward but valid input works.

Every input is generated here. A bad input (missing, not media, truncated, no video
stream, zero frames) must stop with one line that names the input and the reason, and
leave nothing at the output path; odd sizes, rotation metadata, a path with spaces and
non-ASCII characters, and still images (jpg/png/webp, EXIF orientation) must work.

Two layers: the driver's and the worker's calls without Ray (plan_job, probe_video,
run_chunk, finish_job), then the `facefleet run` command once over all inputs together.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from localrun import run_local

from facefleet.cluster.chunk import run_chunk
from facefleet.errors import FacefleetError, InputError
from facefleet.jobs.runner import plan_job
from facefleet.jobs.spec import ChunkTask, JobSpec
from facefleet.media.encode import EncodeSettings
from facefleet.media.image import check_image
from facefleet.media.probe import probe_video
from facefleet.pipeline.processor import build_processor
from facefleet.pipeline.spec import PipelineSpec
from facefleet.samples import SampleSpec, background, load_sprites, make_sample_video, render_frame

DATA = Path(__file__).parent / "data"
FRAMES = 24
SMALL = dict(width=320, height=180, frames=FRAMES, gop=8)
UNICODE_NAME = "dir with space/vidéo ünï 名前.mp4"
TMP_MARK = ".facefleet-"
CLI_TIMEOUT_S = 240


# --- building inputs ----------------------------------------------------------------


def write_text(path: Path) -> None:
    path.write_text("eggs, milk, flour\nthis is a shopping list, not a video\n")


def write_audio_only(path: Path) -> None:
    """An MP4 holding one AAC stream and nothing else."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=48000)
        stream.layout = "mono"
        for i in range(0, 24000, 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 48000
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(str(path)) as check:
        assert [s.type for s in check.streams] == ["audio"]


def write_zero_frames(path: Path) -> None:
    """An MP4 with an H.264 video stream and no packets (`empty_moov` keeps the empty track)."""
    with av.open(str(path), "w", options={"movflags": "empty_moov"}) as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        out.start_encoding()
    with av.open(str(path)) as check:
        assert len(check.streams.video) == 1
        assert not any(p.size for p in check.demux())


def remux_faststart(src: Path, dst: Path) -> None:
    """The same packets, with the index ('moov') before the frame data ('mdat')."""
    with av.open(str(src)) as source, av.open(str(dst), "w", options={"movflags": "+faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in source.streams}
        for packet in source.demux():
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    data = dst.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")


def cut(src: Path, dst: Path, fraction: float) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])


def damage(src: Path, dst: Path) -> None:
    """Noise over a tenth of the frame data; the header and index stay intact."""
    data = bytearray(src.read_bytes())
    start, length = int(len(data) * 0.4), len(data) // 10
    data[start : start + length] = np.random.default_rng(0).integers(0, 256, length, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))


def face_scene(width: int = 320, height: int = 180, seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """One BGR picture with faces, and their boxes."""
    spec = SampleSpec(width=width, height=height, frames=FRAMES, faces=2, seed=seed)
    image, boxes = render_frame(6, spec, load_sprites(DATA), background(width, height, 0, seed))
    assert len(boxes) >= 1
    return image, boxes


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """A JPEG with an EXIF block (APP1) holding only the Orientation tag."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    app1 = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def encode_image(ext: str, pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(ext, pixels, [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else [])
    assert ok
    return data.tobytes()


@dataclass
class Case:
    path: Path
    reason: str | None = None  # bad input: regex the one-line error must match
    truth: list | None = None  # good video: face boxes of every displayed frame
    display: np.ndarray | None = None  # good image: the picture as it should display
    boxes: np.ndarray | None = None  # good image: its face boxes
    alpha: np.ndarray | None = None  # good image with an alpha channel


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("inputs")
    out: dict[str, Case] = {}

    # good videos
    unicode_path = root / UNICODE_NAME
    unicode_path.parent.mkdir()
    out["unicode"] = Case(unicode_path, truth=make_sample_video(unicode_path, DATA, SampleSpec(**SMALL)))
    odd = root / "odd 641x361.mp4"
    out["odd"] = Case(odd, truth=make_sample_video(odd, DATA, SampleSpec(**{**SMALL, "width": 641, "height": 361})))
    for rotation in (90, 270):
        path = root / f"portrait rot{rotation}.mp4"
        spec = SampleSpec(**SMALL, rotation=rotation, upright=True, audio=False)
        out[f"rot{rotation}"] = Case(path, truth=make_sample_video(path, DATA, spec))

    # good images
    picture, boxes = face_scene()
    for ext in (".jpg", ".png", ".webp"):
        path = root / f"photo{ext}"
        path.write_bytes(encode_image(ext, picture))
        out[f"image{ext}"] = Case(path, display=picture, boxes=boxes)
    alpha = np.tile(np.linspace(40, 255, picture.shape[1]).astype(np.uint8), (picture.shape[0], 1))
    path = root / "photo alpha.png"
    path.write_bytes(encode_image(".png", np.dstack([picture, alpha])))
    out["image alpha"] = Case(path, display=picture, boxes=boxes, alpha=alpha)
    path = root / "phone photo exif6.jpg"  # stored turned left; EXIF 6 says: turn right to display
    path.write_bytes(with_exif_orientation(encode_image(".jpg", np.rot90(picture, 1)), 6))
    out["image exif"] = Case(path, display=picture, boxes=boxes)

    # bad videos
    source = root / "source.mp4"
    make_sample_video(source, DATA, SampleSpec(**SMALL))
    faststart = root / "source faststart.mp4"
    remux_faststart(source, faststart)
    source_mkv = root / "source.mkv"
    make_sample_video(source_mkv, DATA, SampleSpec(**SMALL, container="mkv"))

    out["missing"] = Case(root / "missing.mp4", r"file not found")
    out["empty"] = Case(root / "empty.mp4", r"file is empty \(0 bytes\)")
    out["empty"].path.write_bytes(b"")
    out["text"] = Case(root / "text.mp4", r"not a readable media file")
    write_text(out["text"].path)
    out["text, unicode name"] = Case(root / "dir with space" / "kaputt ü 名.mp4", r"not a readable media file")
    write_text(out["text, unicode name"].path)
    out["text.txt"] = Case(root / "notes.txt", r"not a readable media file")
    write_text(out["text.txt"].path)
    out["audio only"] = Case(root / "audio only.mp4", r"has no video stream \(streams: audio\)")
    write_audio_only(out["audio only"].path)
    out["zero frames"] = Case(root / "zero frames.mp4", r"video stream has no frames")
    write_zero_frames(out["zero frames"].path)
    for percent in (30, 70):
        case = Case(root / f"cut {percent}.mp4", r"truncated MP4: the file ends inside its 'mdat' box.*'moov'\) is missing")
        cut(source, case.path, percent / 100)
        out[f"cut {percent}"] = case
    for percent in (30, 70, 95):
        reason = rf"truncated MP4: the file ends inside its 'mdat' box.*only \d+ of the {FRAMES} frames"
        case = Case(root / f"faststart cut {percent}.mp4", reason)
        cut(faststart, case.path, percent / 100)
        out[f"faststart cut {percent}"] = case
    out["mkv cut 60"] = Case(root / "cut 60.mkv", r"truncated Matroska/WebM: the file ends at byte")
    cut(source_mkv, out["mkv cut 60"].path, 0.6)
    # damaged frame data: only decoding finds out (it may also be concealed: then it works)
    out["damaged"] = Case(root / "damaged.mp4", r"damaged video: decoding fails after \d+\.\d\d s")
    damage(source, out["damaged"].path)

    # bad images
    out["image missing"] = Case(root / "missing.webp", r"file not found")
    out["image empty"] = Case(root / "empty.png", r"file is empty \(0 bytes\)")
    out["image empty"].path.write_bytes(b"")
    out["image text"] = Case(root / "not a picture.jpg", r"not a readable image")
    write_text(out["image text"].path)
    return out


GOOD_VIDEOS = ["unicode", "odd", "rot90", "rot270"]
GOOD_IMAGES = ["image.jpg", "image.png", "image.webp", "image alpha", "image exif"]
BAD_VIDEOS = [
    "missing", "empty", "text", "text, unicode name", "text.txt", "audio only", "zero frames",
    "cut 30", "cut 70", "faststart cut 30", "faststart cut 70", "faststart cut 95", "mkv cut 60",
]
BAD_IMAGES = ["image missing", "image empty", "image text"]


# --- checking outputs -----------------------------------------------------------------


def displayed_frames(path: Path) -> tuple[list[int], list[np.ndarray], int]:
    """pts and BGR pixels of every frame as displayed (rotation applied), and the rotation."""
    pts, frames, rotation = [], [], 0
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            rotation = frame.rotation
            pts.append(frame.pts)
            frames.append(np.rot90(frame.to_ndarray(format="bgr24"), (rotation // 90) % 4))
    return pts, frames, rotation


def stream_size(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as container:
        ctx = container.streams.video[0].codec_context
        return ctx.width, ctx.height


def sharpness_kept(before: np.ndarray, after: np.ndarray, boxes: np.ndarray) -> list[float]:
    """Per face box: detail left in its middle (Laplacian variance after / before); ~1 untouched, ~0 blurred."""
    kept = []
    for x1, y1, x2, y2 in np.asarray(boxes, np.float32).reshape(-1, 4):
        w, h = x2 - x1, y2 - y1
        xa, ya, xb, yb = (int(round(v)) for v in (x1 + 0.2 * w, y1 + 0.2 * h, x2 - 0.2 * w, y2 - 0.2 * h))
        a = cv2.cvtColor(np.ascontiguousarray(before[ya:yb, xa:xb]), cv2.COLOR_BGR2GRAY)
        b = cv2.cvtColor(np.ascontiguousarray(after[ya:yb, xa:xb]), cv2.COLOR_BGR2GRAY)
        if a.size < 64:
            continue
        kept.append(cv2.Laplacian(b, cv2.CV_64F).var() / max(cv2.Laplacian(a, cv2.CV_64F).var(), 1e-6))
    return kept


def assert_faces_blurred(before: list[np.ndarray], after: list[np.ndarray], truth: list) -> None:
    kept = [k for a, b, boxes in zip(before, after, truth) for k in sharpness_kept(a, b, boxes)]
    assert len(kept) >= len(before), "too few known faces to judge"
    blurred = sum(k < 0.2 for k in kept) / len(kept)
    assert blurred >= 0.95, f"only {blurred:.0%} of {len(kept)} known faces were blurred"


def assert_same_video(src: Path, out: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Same frames (count, timestamps), stored size and rotation; returns displayed frames."""
    in_pts, before, in_rotation = displayed_frames(src)
    out_pts, after, out_rotation = displayed_frames(out)
    assert len(out_pts) == len(in_pts) == FRAMES
    assert out_pts == in_pts
    assert stream_size(out) == stream_size(src)
    assert out_rotation == in_rotation
    assert after[0].shape == before[0].shape
    return before, after


def assert_one_line_naming(message: str, case: Case) -> None:
    assert "\n" not in message and "\r" not in message, message
    assert str(case.path) in message, message
    assert re.search(case.reason, message), f"{message!r} does not say {case.reason!r}"
    assert "Traceback" not in message and "Errno" not in message, message


def image_shape_kept(case: Case, out: Path) -> np.ndarray:
    result = cv2.imdecode(np.fromfile(out, np.uint8), cv2.IMREAD_UNCHANGED)
    assert result is not None
    assert result.shape[:2] == case.display.shape[:2]
    return result


def leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if TMP_MARK in p.name]


# --- layer 1: no Ray ------------------------------------------------------------------


@pytest.fixture(scope="module")
def processor():
    return build_processor(PipelineSpec())


@pytest.mark.parametrize("name", BAD_VIDEOS)
def test_probe_names_the_input_and_the_reason(cases, name):
    case = cases[name]
    with pytest.raises(InputError) as caught:
        probe_video(str(case.path))
    assert caught.value.uri == str(case.path)
    assert_one_line_naming(str(caught.value), case)


@pytest.mark.parametrize("name", BAD_VIDEOS)
def test_bad_video_is_refused_before_any_work(cases, tmp_path, name):
    """The driver refuses it while planning, with the output named as the CLI would name it."""
    case = cases[name]
    out_dir = tmp_path / "out"
    with pytest.raises(FacefleetError) as caught:
        plan_job(JobSpec("bad", str(case.path), str(out_dir / case.path.name)))
    assert_one_line_naming(str(caught.value), case)
    assert not out_dir.exists()


@pytest.mark.parametrize("name", BAD_IMAGES + GOOD_IMAGES)
def test_image_check_before_any_work(cases, name):
    """check_image (cheap: no decoding) refuses what the worker would, with the same line."""
    case = cases[name]
    if case.reason is None:
        check_image(str(case.path))
        return
    with pytest.raises(InputError) as caught:
        check_image(str(case.path))
    assert_one_line_naming(str(caught.value), case)


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_bad_image_is_refused_by_the_worker(cases, processor, tmp_path, name):
    """Whether or not the driver looked first, the worker itself refuses it in one line."""
    case = cases[name]
    workdir = tmp_path / "work"
    workdir.mkdir()
    task = ChunkTask("bad", 0, "image", str(case.path), str(workdir / f"image{case.path.suffix}"), PipelineSpec(), EncodeSettings())
    with pytest.raises(InputError) as caught:
        run_chunk(task, processor)
    assert_one_line_naming(str(caught.value), case)
    assert list(workdir.iterdir()) == []  # no half-written result


def test_damaged_video_fails_in_the_worker_and_leaves_nothing(cases, processor, tmp_path):
    """Probing does not decode, so the worker finds the damage: one line, no segment, no output."""
    case = cases["damaged"]
    output = tmp_path / "out" / case.path.name
    job = plan_job(JobSpec("dmg", str(case.path), str(output)))
    job.workdir.mkdir(parents=True)
    try:
        result = run_chunk(job.tasks[0], processor)
    except InputError as exc:
        assert_one_line_naming(str(exc), case)
        assert list(job.workdir.iterdir()) == []  # the half-written segment is gone
    else:  # the decoder concealed the damage: then every frame must be there
        assert result.frames == job.tasks[0].frames == FRAMES
    assert not output.exists()


@pytest.mark.parametrize("name", GOOD_VIDEOS)
def test_awkward_video_works(cases, processor, tmp_path, name):
    """Odd sizes, rotation metadata and a non-ASCII path: same frames, size and rotation; faces blurred."""
    case = cases[name]
    output = tmp_path / "out dir ü" / f"résultat {name}.mp4"
    job = run_local(JobSpec("good", str(case.path), str(output)), processor)
    assert len(job.tasks) == 1
    assert sum(r.frames for r in job.results.values()) == FRAMES
    before, after = assert_same_video(case.path, output)
    assert_faces_blurred(before, after, case.truth)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("rotation", [90, 270])
def test_rotated_sample_is_stored_sideways_and_displays_upright(cases, rotation):
    """The sample stores its frames turned so that they display upright: the metadata says
    how to turn them back. Displayed frames look like the unrotated sample's frames."""
    case = cases[f"rot{rotation}"]
    info = probe_video(str(case.path))
    assert info.rotation % 360 == rotation
    assert (info.width, info.height) == (SMALL["height"], SMALL["width"])  # stored sideways
    _, frames, _ = displayed_frames(case.path)
    assert frames[0].shape[:2] == (SMALL["height"], SMALL["width"])  # displayed upright


@pytest.mark.parametrize("name", GOOD_IMAGES)
def test_image_works(cases, processor, tmp_path, name):
    """jpg, png, webp: same size and format, faces blurred, alpha kept, EXIF orientation applied."""
    case = cases[name]
    output = tmp_path / "out" / f"résultat {case.path.name}"
    job = run_local(JobSpec("img", str(case.path), str(output)), processor)
    assert sum(r.faces for r in job.results.values()) >= 1
    result = image_shape_kept(case, output)
    assert output.read_bytes()[:3] == case.path.read_bytes()[:3]  # same format
    bgr = result[:, :, :3]
    assert_faces_blurred([case.display], [bgr], [case.boxes])
    if case.alpha is not None:
        assert result.shape[2] == 4 and np.array_equal(result[:, :, 3], case.alpha)
    # away from the faces the picture is the one displayed (so the right way up)
    mask = np.ones(case.display.shape[:2], bool)
    for x1, y1, x2, y2 in case.boxes.astype(int):
        mask[max(0, y1 - 20) : y2 + 20, max(0, x1 - 20) : x2 + 20] = False
    assert mask.mean() > 0.3
    diff = np.abs(bgr.astype(np.int16) - case.display.astype(np.int16))[mask]
    assert diff.mean() < 8, diff.mean()
    assert leftovers(tmp_path) == []


# --- layer 2: the command -------------------------------------------------------------


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "-m", "facefleet", "run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=CLI_TIMEOUT_S,
    )


def test_cli_one_bad_input_does_not_stop_the_others(cases, tmp_path):
    """All inputs in one run: one `FAILED <input>: <reason>` line per bad one, one `ok` line
    per good one, complete outputs for the good ones only, no temporary files, exit != 0."""
    out_dir = tmp_path / "out"
    good = GOOD_VIDEOS[:3] + ["image.jpg", "image.png", "image.webp"]
    bad = ["missing", "empty", "text", "text, unicode name", "text.txt", "audio only", "zero frames",
           "cut 30", "faststart cut 70", "mkv cut 60", "damaged", "image missing", "image text"]
    names = [n for pair in zip(bad, good + [None] * len(bad)) for n in pair if n]  # bad and good mixed
    proc = run_cli([str(cases[n].path) for n in names] + ["-o", str(out_dir), "-q"], tmp_path)
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text
    assert proc.returncode != 0, text

    lines = proc.stdout.splitlines()
    failed, done = [], []
    for name in names:
        case = cases[name]
        failures = [line for line in lines if line.startswith(f"FAILED {case.path}: ")]
        oks = [line for line in lines if re.match(rf"ok\s+{re.escape(str(case.path))} -> ", line)]
        assert len(failures) + len(oks) == 1, f"{name}: {lines}"
        output = out_dir / case.path.name
        if failures:
            failed.append(name)
            assert_one_line_naming(failures[0], case)
            assert not output.exists()
        else:
            done.append(name)
            assert output.is_file()
            if case.truth is not None or name == "damaged":
                assert_same_video(case.path, output)
            else:
                image_shape_kept(case, output)
    assert set(done) - {"damaged"} == set(good)  # damaged data may be concealed by the decoder
    assert f"{len(done)} of {len(names)} inputs done, {len(failed)} failed" in proc.stdout
    assert len([line for line in lines if line.strip()]) == len(names) + 1, lines  # nothing else, nothing wrapped
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(cases[n].path.name for n in done)
    assert leftovers(tmp_path) == []


def test_cli_single_missing_input_is_one_line(tmp_path):
    missing = tmp_path / "nö such vidéo.mp4"
    output = tmp_path / "out.mp4"
    proc = run_cli([str(missing), "-o", str(output), "-q"], tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert "Traceback" not in text, text
    mentions = [line for line in text.splitlines() if str(missing) in line]
    assert len(mentions) == 1, text
    assert "file not found" in mentions[0]
    assert not output.exists()
    assert leftovers(tmp_path) == []
