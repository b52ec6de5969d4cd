"""A corpus of hostile inputs (issue 8), generated: shared by the tests and bench/.

Every entry is a file plus what facefleet must do with it: "ok" (a correct output),
"fail" (a one-line error naming the input and matching `reason`) or "either" (damage
the decoder may conceal: a correct output, or a one-line error). Nothing is downloaded;
videos are written with PyAV, images with OpenCV (plus a hand-written CMYK TIFF).

    build_corpus(root)            -> list[Entry]   (the whole corpus, about 80 files, ~10 s)
    mutate(data, rng)             -> (kind, bytes) (one fuzzing mutation of a file)
    small_mp4(path)               -> a small valid mp4 to fuzz
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

TRUNCATED = r"truncated (MP4|Matroska/WebM|or unfinished MP4)|not a readable media file|damaged or truncated|video stream has no frames|video cannot be decoded|no decodable frames"
DAMAGED = r"damaged|truncated|not a readable|cannot be decoded|no decodable|timestamps|no frames"


@dataclass
class Entry:
    kind: str  # the row of the report table
    name: str  # unique within the corpus
    path: Path
    expect: str  # "ok" | "fail" | "either"
    reason: str | None = None  # regex a failure's message must match
    frames: int | None = None  # an "ok" video: frames the output must have (None: as many as decode)
    image: bool = False


# --- writing videos ---------------------------------------------------------------------


def picture(t: int, width: int, height: int) -> np.ndarray:
    """An RGB frame that changes every frame: a gradient and a moving square."""
    xs = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    ys = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    r = (xs + 3 * t) % 256 + 0 * ys
    g = (ys + 5 * t) % 256 + 0 * xs
    b = np.full((height, width), (40 + 7 * t) % 256, np.float32)
    img = np.stack([r, g, b], axis=2).astype(np.uint8)
    s = max(2, min(width, height) // 4)
    x0 = (t * 3) % max(1, width - s)
    y0 = (t * 2) % max(1, height - s)
    img[y0 : y0 + s, x0 : x0 + s] = 255 - img[y0 : y0 + s, x0 : x0 + s]
    return img


def write_video(
    path: Path,
    width: int = 96,
    height: int = 64,
    frames: int = 12,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rate: Fraction = Fraction(25),
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    options: dict | None = None,
    rotation: int = 0,
    audio: bool = False,
    container_options: dict | None = None,
    fmt: str | None = None,
) -> list[int]:
    """Write a video; returns the pts (in the stream's time base) the muxer was given."""
    time_base = time_base or (Fraction(1, 1000) if path.suffix == ".mkv" else Fraction(1, 90000))
    step = 1 / rate / time_base
    pts = pts if pts is not None else [round(i * step) for i in range(frames)]
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as out:
        vs = out.add_stream(codec, rate=rate)
        vs.width, vs.height, vs.pix_fmt = width, height, pix_fmt
        vs.time_base = time_base
        vs.codec_context.time_base = time_base
        defaults = {"preset": "ultrafast", "g": "6"} if codec in ("libx264", "libx265") else {}
        if codec == "libx265":
            defaults["x265-params"] = "log-level=none"
        vs.options = {**defaults, **(options or {})}
        if rotation:
            vs.set_display_rotation(rotation)
        aud = None
        if audio:
            aud = out.add_stream("aac", rate=48000)
            aud.layout = "mono"
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(picture(i, width, height), format="rgb24")
            frame.pts, frame.time_base = p, time_base
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if aud is not None:
            seconds = float(pts[-1] * time_base) + 0.1
            for i in range(0, int(48000 * seconds), 1024):
                af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                af.sample_rate, af.pts = 48000, i
                out.mux(aud.encode(af))
            out.mux(aud.encode(None))
    return pts


def small_mp4(path: Path, frames: int = 12, faststart: bool = False) -> Path:
    write_video(path, frames=frames, audio=True, container_options={"movflags": "+faststart"} if faststart else None)
    return path


def remux(src: Path, dst: Path, edit: Callable[[int, av.Packet], av.Packet | None] = lambda i, p: p, **options) -> None:
    """Copy the packets of `src` into `dst` (format from the name), through `edit(video index, packet)`."""
    with av.open(str(src)) as source, av.open(str(dst), "w", options=options) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in source.streams}
        n = 0
        for packet in source.demux():
            if packet.dts is None:
                continue
            index = packet.stream.index
            if packet.stream.type == "video":
                packet = edit(n, packet)
                n += 1
                if packet is None:
                    continue
            packet.stream = streams[index]
            out.mux(packet)


def decodable(path: Path) -> list[int]:
    """pts of every frame FFmpeg decodes from the file, errors ignored (concealment on)."""
    out = []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        try:
            for frame in c.decode(stream):
                out.append(frame.pts)
        except av.error.FFmpegError:
            pass
    return out


# --- writing images ---------------------------------------------------------------------


def cmyk_tiff(width: int, height: int) -> bytes:
    """An uncompressed baseline TIFF with 4 samples per pixel, PhotometricInterpretation 5 (CMYK)."""
    rgb = picture(3, width, height).astype(np.float32) / 255
    k = 1 - rgb.max(axis=2)
    denom = np.maximum(1 - k, 1e-6)
    cmy = (1 - rgb - k[..., None]) / denom[..., None]
    pixels = (np.dstack([cmy, k]) * 255).round().astype(np.uint8).tobytes()
    entries = [  # tag, type (3 SHORT, 4 LONG), count, value
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 4, None), (259, 3, 1, 1), (262, 3, 1, 5),
        (273, 4, 1, None), (277, 3, 1, 4), (278, 4, 1, height), (279, 4, 1, len(pixels)), (284, 3, 1, 1),
    ]
    ifd_at = 8
    ifd_size = 2 + 12 * len(entries) + 4
    bits_at = ifd_at + ifd_size
    data_at = bits_at + 8
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if tag == 258:
            value = bits_at
            ifd += struct.pack("<HHII", tag, kind, count, value)
        elif tag == 273:
            ifd += struct.pack("<HHII", tag, kind, count, data_at)
        elif kind == 3:
            ifd += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            ifd += struct.pack("<HHII", tag, kind, count, value)
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_at) + ifd + struct.pack("<4H", 8, 8, 8, 8) + pixels


def encode_image(ext: str, pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(ext, pixels)
    assert ok, ext
    return data.tobytes()


# --- the corpus -------------------------------------------------------------------------

CUT_FRACTIONS = (0.02, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.97, 0.999)
CUT_BYTES = (7, 16, 40, 200)


def build_corpus(root: Path, huge: bool = True) -> list[Entry]:
    """Write every hostile input under `root` (created); returns what each must give."""
    root.mkdir(parents=True, exist_ok=True)
    entries: list[Entry] = []

    def add(kind: str, name: str, expect: str, reason: str | None = None, frames: int | None = None, image: bool = False) -> Path:
        path = root / name
        entries.append(Entry(kind, name, path, expect, reason, frames, image))
        return path

    base = small_mp4(root / "_base.mp4", frames=12)
    base_fs = small_mp4(root / "_base_faststart.mp4", frames=12, faststart=True)
    base_mkv = root / "_base.mkv"
    write_video(base_mkv, frames=12)
    data, data_fs, data_mkv = base.read_bytes(), base_fs.read_bytes(), base_mkv.read_bytes()

    # truncated at many cut points
    for source, label, blob in (("mp4", "t_mp4", data), ("faststart", "t_fs", data_fs), ("mkv", "t_mkv", data_mkv)):
        ext = ".mkv" if source == "mkv" else ".mp4"
        cuts = sorted({int(len(blob) * f) for f in CUT_FRACTIONS} | set(CUT_BYTES) | {len(blob) - 1})
        if source == "mkv":
            cuts = sorted(set([c for c in cuts if c >= 200][::2] + [len(blob) - 1]))
        for c in cuts:
            add("truncated", f"{label} cut {c}{ext}", "fail", TRUNCATED).write_bytes(blob[:c])

    # bit flips: in the frame data only (header intact), and anywhere
    mdat = data.index(b"mdat") + 4
    moov = data.index(b"moov") - 4
    rng = np.random.default_rng(8)
    for i in range(8):
        blob = bytearray(data)
        lo, hi = (mdat, moov) if i < 5 else (0, len(blob))
        for pos in rng.integers(lo, hi, 4 + 8 * i):
            blob[pos] ^= 1 << int(rng.integers(0, 8))
        add("bit flips", f"flips {i}.mp4", "either", DAMAGED).write_bytes(bytes(blob))

    # not video at all
    add("not video", "zero bytes.mp4", "fail", r"file is empty \(0 bytes\)").write_bytes(b"")
    add("not video", "text.mp4", "fail", r"not a readable media file").write_text("this is a shopping list\n" * 20)
    add("not video", "random bytes.mp4", "fail", r"not a readable media file|no video stream").write_bytes(
        np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    )
    add("not video", "html.mp4", "fail", r"not a readable media file").write_text("<html><body>404 Not Found</body></html>\n")
    audio = add("not video", "audio only.mp4", "fail", r"has no video stream \(streams: audio\)")
    with av.open(str(audio), "w") as out:
        stream = out.add_stream("aac", rate=48000)
        stream.layout = "mono"
        for i in range(0, 24000, 1024):
            af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            af.sample_rate, af.pts = 48000, i
            out.mux(stream.encode(af))
        out.mux(stream.encode(None))

    # timestamps that jump or go backwards
    step = 3600  # 25 fps at 1/90000
    add("timestamps", "jump forward.mp4", "ok", frames=12)
    write_video(entries[-1].path, frames=12, pts=[i * step + (900_000 if i >= 6 else 0) for i in range(12)], options={"bf": "0"})
    add("timestamps", "start 10s.mkv", "ok", frames=12)
    write_video(entries[-1].path, frames=12, pts=[10_000 + i * 40 for i in range(12)])
    ts_a, ts_b = root / "_a.ts", root / "_b.ts"
    write_video(ts_a, frames=12, pts=[900_000 + i * step for i in range(12)], options={"bf": "0"})
    write_video(ts_b, frames=12, options={"bf": "0"})
    add("timestamps", "backwards (ts concat).ts", "either", r"timestamps go backwards|share one timestamp").write_bytes(
        ts_a.read_bytes() + ts_b.read_bytes()
    )
    add("timestamps", "repeated (ts concat).ts", "either", r"timestamps go backwards|share one timestamp").write_bytes(
        ts_b.read_bytes() * 2
    )
    add("timestamps", "ts plain.ts", "ok", frames=12).write_bytes(ts_b.read_bytes())
    ts_c, ts_d = root / "_c.ts", root / "_d.ts"  # too short for the probe's check: the decoder's catches it
    write_video(ts_c, frames=5, pts=[900_000 + i * step for i in range(5)], options={"bf": "0"})
    write_video(ts_d, frames=5, options={"bf": "0"})
    add("timestamps", "backwards short (ts concat).ts", "fail", r"timestamps go backwards").write_bytes(
        ts_c.read_bytes() + ts_d.read_bytes()
    )

    # variable frame rate
    vfr = [0]
    for i in range(1, 20):
        vfr.append(vfr[-1] + (1500, 3000, 9000)[i % 3])
    add("variable frame rate", "vfr.mp4", "ok", frames=20)
    write_video(entries[-1].path, frames=20, pts=vfr, options={"bf": "0"})
    add("variable frame rate", "vfr bframes.mkv", "ok", frames=20)
    write_video(entries[-1].path, frames=20, pts=[p // 90 for p in vfr], options={"bf": "2"})

    # pixel formats
    for name, codec, fmt in (
        ("10bit h264.mp4", "libx264", "yuv420p10le"),
        ("10bit hevc.mp4", "libx265", "yuv420p10le"),
        ("yuv444 h264.mp4", "libx264", "yuv444p"),
        ("yuv444 10bit h264.mkv", "libx264", "yuv444p10le"),
        ("yuv422 h264.mp4", "libx264", "yuv422p"),
        ("gray h264.mp4", "libx264", "gray"),
        ("mjpeg.mkv", "mjpeg", "yuvj444p"),
    ):
        add("10-bit / yuv444 / other formats", name, "ok", frames=10)
        write_video(entries[-1].path, frames=10, codec=codec, pix_fmt=fmt)

    # rotation metadata
    for rotation in (90, 180, 270, -90):
        add("rotation", f"rotation {rotation}.mp4", "ok", frames=8)
        write_video(entries[-1].path, frames=8, rotation=rotation)

    # sizes
    add("tiny / huge / odd sizes", "tiny 16x16.mp4", "ok", frames=8)
    write_video(entries[-1].path, 16, 16, frames=8)
    add("tiny / huge / odd sizes", "tiny 2x2.mkv", "ok", frames=4)
    write_video(entries[-1].path, 2, 2, frames=4, codec="ffv1", pix_fmt="yuv444p")
    for w, h in ((33, 17), (99, 71)):
        add("tiny / huge / odd sizes", f"odd {w}x{h}.mp4", "ok", frames=8)
        write_video(entries[-1].path, w, h, frames=8, pix_fmt="yuv444p")
    add("tiny / huge / odd sizes", "odd 97x55 420.mkv", "ok", frames=8)
    write_video(entries[-1].path, 97, 55, frames=8, codec="ffv1", pix_fmt="yuv420p")
    if huge:
        add("tiny / huge / odd sizes", "huge 7680x4320.mp4", "ok", frames=2)
        write_video(entries[-1].path, 7680, 4320, frames=2)

    # a thousand frames, one of them corrupt
    long = root / "_long.mp4"
    write_video(long, 64, 48, frames=1000, options={"g": "50", "bf": "0"})
    rng_c = np.random.default_rng(5)

    def corrupt(i: int, packet: av.Packet) -> av.Packet:
        if i != 523:
            return packet
        payload = bytearray(bytes(packet))
        noise = rng_c.integers(0, 256, max(0, len(payload) - 4), dtype=np.uint8).tobytes()
        payload[4:] = noise  # keep the NAL length prefix, scramble the slice
        fresh = av.Packet(bytes(payload))
        fresh.pts, fresh.dts, fresh.time_base = packet.pts, packet.dts, packet.time_base
        fresh.is_keyframe = packet.is_keyframe
        return fresh

    remux(long, add("one corrupt frame in 1000", "1000 frames one corrupt.mp4", "either", DAMAGED), corrupt)
    remux(long, add("one corrupt frame in 1000", "1000 frames one dropped.mp4", "ok", frames=999), lambda i, p: None if i == 523 else p)

    # images
    rgb = picture(2, 120, 80)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    alpha = np.tile(np.linspace(0, 255, 120).astype(np.uint8), (80, 1))
    add("images", "alpha.png", "ok", image=True).write_bytes(encode_image(".png", np.dstack([bgr, alpha])))
    add("images", "alpha.webp", "ok", image=True).write_bytes(encode_image(".webp", np.dstack([bgr, alpha])))
    add("images", "16bit.png", "ok", image=True).write_bytes(encode_image(".png", bgr.astype(np.uint16) * 257))
    add("images", "16bit alpha.png", "ok", image=True).write_bytes(
        encode_image(".png", np.dstack([bgr, alpha]).astype(np.uint16) * 257)
    )
    add("images", "16bit gray.png", "ok", image=True).write_bytes(encode_image(".png", bgr[:, :, 0].astype(np.uint16) * 257))
    add("images", "16bit.tiff", "ok", image=True).write_bytes(encode_image(".tiff", bgr.astype(np.uint16) * 257))
    add("images", "float32.tiff", "ok", image=True).write_bytes(encode_image(".tiff", bgr.astype(np.float32) / 255))
    add("images", "gray.jpg", "ok", image=True).write_bytes(encode_image(".jpg", bgr[:, :, 1]))
    add("images", "cmyk.tif", "ok", image=True).write_bytes(cmyk_tiff(120, 80))
    add("images", "tiny 16x16.png", "ok", image=True).write_bytes(encode_image(".png", bgr[:16, :16]))
    add("images", "odd 33x17.jpg", "ok", image=True).write_bytes(encode_image(".jpg", bgr[:17, :33]))
    add("images", "jpeg named png.png", "ok", image=True).write_bytes(encode_image(".jpg", bgr))
    png = encode_image(".png", bgr)
    add("images", "truncated.png", "fail", r"not a readable image", image=True).write_bytes(png[: len(png) // 2])
    jpg = encode_image(".jpg", bgr)
    add("images", "truncated head.jpg", "fail", r"not a readable image", image=True).write_bytes(jpg[:200])
    add("images", "zero bytes.png", "fail", r"file is empty", image=True).write_bytes(b"")
    add("images", "text.jpg", "fail", r"not a readable image", image=True).write_text("not a picture\n")

    # awkward paths: a valid video and a bad one under each
    for label, name in (
        ("spaces", "a b  c .mp4"),
        ("quotes", "it's \"quoted\" `x`.mp4"),
        ("non-ASCII", "vidéo ünï 名前 🎞.mp4"),
        ("newline", "line\nbreak.mp4"),
        ("tab", "tab\there.mp4"),
        ("dash", "-starts with dash.mp4"),
    ):
        path = add("awkward paths", f"path {name}", "ok", frames=6)
        write_video(path, frames=6)
        bad = add("awkward paths", f"bad path {name}", "fail", r"not a readable media file")
        bad.write_text("not a video\n")

    # a few fuzzing mutants, through the whole run
    rng_f = np.random.default_rng(88)
    for i, kind in enumerate(MUTATIONS):
        add("fuzz mutants", f"mutant {i} {kind}.mp4", "either", r".").write_bytes(mutate(data, rng_f, kind)[1])

    for p in root.glob("_*"):
        p.unlink()
    return entries


# --- fuzzing mutations ------------------------------------------------------------------

MUTATIONS = ("bit flips", "byte deletion", "byte insertion", "truncation", "box size", "chunk overwrite", "chunk duplicate")


def _boxes(data: bytes) -> list[int]:
    """Offsets of the size fields of MP4 boxes (top level and one level in moov/trak/mdia)."""
    out = []

    def walk(lo: int, hi: int, depth: int) -> None:
        at = lo
        while at + 8 <= hi:
            size = int.from_bytes(data[at : at + 4], "big")
            kind = data[at + 4 : at + 8]
            out.append(at)
            if size < 8 or at + size > hi:
                return
            if depth < 4 and kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl"):
                walk(at + 8, at + size, depth + 1)
            at += size

    walk(0, len(data), 0)
    return out


def mutate(data: bytes, rng: np.random.Generator, kind: str | None = None) -> tuple[str, bytes]:
    """One random mutation of a file's bytes: (mutation kind, mutated bytes)."""
    kind = kind or MUTATIONS[int(rng.integers(0, len(MUTATIONS)))]
    blob = bytearray(data)
    n = len(blob)
    if kind == "bit flips":
        for pos in rng.integers(0, n, int(rng.integers(1, 64))):
            blob[pos] ^= 1 << int(rng.integers(0, 8))
    elif kind == "byte deletion":
        at = int(rng.integers(0, n))
        del blob[at : at + int(rng.integers(1, 256))]
    elif kind == "byte insertion":
        at = int(rng.integers(0, n))
        blob[at:at] = rng.integers(0, 256, int(rng.integers(1, 256)), dtype=np.uint8).tobytes()
    elif kind == "truncation":
        del blob[int(rng.integers(0, n)) :]
    elif kind == "box size":
        boxes = _boxes(data)
        at = boxes[int(rng.integers(0, len(boxes)))]
        choice = int(rng.integers(0, 5))
        size = int.from_bytes(blob[at : at + 4], "big")
        value = (0, 1, 7, size + int(rng.integers(-64, 64)), 0xFFFFFFFF)[choice]
        blob[at : at + 4] = max(0, min(value, 0xFFFFFFFF)).to_bytes(4, "big")
    elif kind == "chunk overwrite":
        at = int(rng.integers(0, n))
        length = int(rng.integers(1, 2048))
        blob[at : at + length] = rng.integers(0, 256, min(length, n - at), dtype=np.uint8).tobytes()
    elif kind == "chunk duplicate":
        at = int(rng.integers(0, n))
        piece = blob[at : at + int(rng.integers(8, 1024))]
        to = int(rng.integers(0, n))
        blob[to:to] = piece
    else:
        raise ValueError(kind)
    return kind, bytes(blob)


# --- one fuzzing iteration --------------------------------------------------------------


def fuzz_one(path: Path, out_dir: Path, chunk_frames: int = 4) -> tuple[str, str]:
    """Probe, plan and decode every chunk of `path` the way a worker would (no stages):
    ("ok", frames) when every planned frame decodes, ("error", message) for a FacefleetError
    (a clean one-line refusal; a short decode counts too, as run_chunk refuses it),
    ("crash", traceback line) for any other exception."""
    from facefleet.errors import FacefleetError, one_line
    from facefleet.jobs.runner import plan_job
    from facefleet.jobs.spec import JobSpec
    from facefleet.media.decode import decode_range

    try:
        job = plan_job(JobSpec("fuzz", str(path), str(out_dir / "out.mp4"), chunk_frames=chunk_frames))
        total = 0
        for task in job.tasks:
            n = sum(1 for _ in decode_range(task.input_uri, task.decode_first_pts, task.decode_last_pts, task.seek_pts, threads=1))
            expected = task.frames + task.context_before + getattr(task, "context_after", 0)
            if n < task.frames:
                return "error", f"{path}: chunk {task.index}: decoded {n} of {expected} frames (damaged video)"
            total += task.frames
        return "ok", f"{total} frames"
    except FacefleetError as exc:
        message = str(exc)
        if "\n" in message or "Traceback" in message:
            return "crash", f"not one line: {message!r}"
        return "error", message
    except Exception as exc:  # noqa: BLE001 - what the fuzzer is looking for
        return "crash", one_line(exc)
