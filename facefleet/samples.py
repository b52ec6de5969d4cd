"""Sample videos with faces at known positions, built from still face images.

Used by `make demo`, the tests and the benchmarks. Each face image comes with the face
boxes inside it (faces.json next to the images); the builder moves and scales the images
over a textured background and records where every face is in every frame.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

SAMPLE_RATE = 48000


@dataclass(frozen=True)
class Sprite:
    image: np.ndarray  # BGR
    faces: np.ndarray  # (N, 4) face boxes inside the image


@dataclass(frozen=True)
class SampleSpec:
    width: int = 640
    height: int = 360
    frames: int = 60
    fps: Fraction = Fraction(30000, 1001)
    faces: int = 3  # sprites on screen
    audio: bool = True
    start: float = 0.0  # presentation time of the first video frame, seconds
    container: str = "mp4"
    gop: int = 30  # keyframe interval
    bframes: int = 2
    crf: int = 18
    rotation: int = 0  # display rotation metadata, degrees counter-clockwise (PyAV's convention)
    seed: int = 0
    # With a rotation: False stores the rendered frames as they are (so they display
    # turned); True stores them turned the other way so that they DISPLAY upright, as a
    # phone's portrait video does. Width, height and the face boxes are then display ones.
    upright: bool = False


def load_sprites(faces_dir: Path) -> list[Sprite]:
    boxes = json.loads((faces_dir / "faces.json").read_text())
    sprites = []
    for name in sorted(boxes):
        image = cv2.imread(str(faces_dir / name))
        if image is None:
            raise FileNotFoundError(faces_dir / name)
        sprites.append(Sprite(image=image, faces=np.asarray(boxes[name], np.float32).reshape(-1, 4)))
    return sprites


def background(width: int, height: int, t: int, seed: int) -> np.ndarray:
    """A smooth moving gradient with fixed texture: cheap, and not trivially compressible."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 24, size=(height, width, 1), dtype=np.uint8)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = t * 0.05
    base = np.stack(
        [
            90 + 60 * np.sin(xs / max(width, 1) * 3.1 + phase),
            110 + 50 * np.cos(ys / max(height, 1) * 2.3 - phase),
            120 + 40 * np.sin((xs + ys) / max(width + height, 1) * 4.0 + phase / 2),
        ],
        axis=2,
    )
    return np.clip(base + texture, 0, 255).astype(np.uint8)


def sprite_placement(k: int, t: int, spec: SampleSpec, sprite: Sprite) -> tuple[float, float, float]:
    """Where sprite k sits at frame t: top-left x, y and scale. Moves, scales, enters and leaves."""
    h, w = sprite.image.shape[:2]
    target = spec.height * (0.45 + 0.1 * (k % 3)) / h
    scale = target * (1.0 + 0.15 * math.sin(0.07 * t + k))
    period = max(spec.frames, 2)
    progress = ((t + k * period / max(spec.faces, 1)) % period) / period
    span = spec.width + w * scale
    x = -w * scale * 0.5 + progress * span * 0.9 if k % 2 == 0 else spec.width - w * scale * 0.5 - progress * span * 0.9
    y = (spec.height - h * scale) * (0.2 + 0.6 * ((k * 0.37) % 1.0)) + 10 * math.sin(0.1 * t + k)
    return x, y, scale


def render_frame(t: int, spec: SampleSpec, sprites: list[Sprite], bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame t (BGR) and the boxes of the faces at least half visible in it.

    A face counts as visible when at least half of its box is inside the frame and not
    covered by a sprite drawn later.
    """
    frame = bg.copy()
    owner = np.full(frame.shape[:2], -1, np.int32)
    placed = []
    for k in range(spec.faces):
        sprite = sprites[k % len(sprites)]
        x, y, scale = sprite_placement(k, t, spec, sprite)
        h, w = sprite.image.shape[:2]
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
        x0, y0 = round(x), round(y)
        fx0, fy0 = max(0, x0), max(0, y0)
        fx1, fy1 = min(spec.width, x0 + sw), min(spec.height, y0 + sh)
        if fx1 <= fx0 or fy1 <= fy0:
            continue
        img = cv2.resize(sprite.image, (sw, sh), interpolation=cv2.INTER_AREA)
        frame[fy0:fy1, fx0:fx1] = img[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
        owner[fy0:fy1, fx0:fx1] = k
        placed.extend((k, box + np.float32([x0, y0, x0, y0])) for box in sprite.faces * np.float32(sw / w))
    visible = []
    for k, box in placed:
        area = (box[2] - box[0]) * (box[3] - box[1])
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        region = owner[max(0, y1) : max(0, y2), max(0, x1) : max(0, x2)]
        if area > 0 and np.count_nonzero(region == k) / area >= 0.5:
            visible.append(np.clip(box, 0, [spec.width, spec.height, spec.width, spec.height]))
    return frame, np.asarray(visible, np.float32).reshape(-1, 4)


def make_sample_video(path: Path, faces_dir: Path, spec: SampleSpec = SampleSpec()) -> list[np.ndarray]:
    """Write a sample video to `path` and return the face boxes of every frame.

    The boxes are in the rendered frames' coordinates: the displayed frames when
    `spec.upright`, else the stored ones.
    """
    sprites = load_sprites(faces_dir)
    turns = (spec.rotation // 90) % 4 if spec.upright else 0
    bg_static = background(spec.width, spec.height, 0, spec.seed)
    truth = []
    time_base = Fraction(1, 90000) if spec.container != "mkv" else Fraction(1, 1000)
    frame_ticks = 1 / spec.fps / time_base
    start_ticks = round(spec.start / time_base)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=spec.fps)
        vs.width, vs.height = (spec.height, spec.width) if turns % 2 else (spec.width, spec.height)
        vs.pix_fmt = "yuv444p" if spec.width % 2 or spec.height % 2 else "yuv420p"  # x264: 4:2:0 needs even sizes
        vs.time_base = time_base
        vs.codec_context.time_base = time_base
        vs.options = {"crf": str(spec.crf), "preset": "veryfast", "g": str(spec.gop), "bf": str(spec.bframes)}
        if spec.rotation:
            vs.set_display_rotation(spec.rotation)
        aud = None
        if spec.audio:
            aud = out.add_stream("aac", rate=SAMPLE_RATE)
            aud.layout = "mono"
        for t in range(spec.frames):
            shift = (t * 2) % spec.width
            bg = np.roll(bg_static, shift, axis=1)
            image, boxes = render_frame(t, spec, sprites, bg)
            truth.append(boxes)
            if turns:  # displayed = stored turned `rotation` degrees counter-clockwise
                image = np.ascontiguousarray(np.rot90(image, -turns))
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = start_ticks + round(t * frame_ticks)
            frame.time_base = time_base
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if aud is not None:
            _write_tone(out, aud, spec.frames / float(spec.fps), spec.start)
    return truth


def _write_tone(out: av.container.OutputContainer, stream, seconds: float, start: float) -> None:
    """A 440 Hz tone with a click every second, starting at `start` like the video."""
    samples = int(seconds * SAMPLE_RATE)
    t = np.arange(samples) / SAMPLE_RATE
    wave = 0.2 * np.sin(2 * math.pi * 440 * t)
    wave[(np.arange(samples) % SAMPLE_RATE) < 480] = 0.8
    wave = wave.astype(np.float32)
    offset = round(start * SAMPLE_RATE)
    for i in range(0, samples, 1024):
        chunk = wave[i : i + 1024]
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = offset + i
        frame.time_base = Fraction(1, SAMPLE_RATE)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def main(argv: list[str] | None = None) -> None:
    """python -m facefleet.samples FACES_DIR OUTPUT [--width W --height H --frames N]"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m facefleet.samples", description=main.__doc__)
    parser.add_argument("faces_dir", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--faces", type=int, default=3)
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    spec = SampleSpec(width=args.width, height=args.height, frames=args.frames, faces=args.faces)
    truth = make_sample_video(args.output, args.faces_dir, spec)
    print(f"wrote {args.output}: {spec.frames} frames {spec.width}x{spec.height}, {sum(map(len, truth))} faces in all")


if __name__ == "__main__":
    main()
