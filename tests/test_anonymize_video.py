"""Faces in a video with known face positions are anonymized; the rest is left as it was."""

import numpy as np
import pytest
from localrun import decode_all, run_local

from facefleet.jobs.spec import JobSpec
from facefleet.models.manifest import get_model
from facefleet.models.session import create_session
from facefleet.pipeline.detect import FaceDetector
from facefleet.pipeline.geometry import box_iou, pixel_box, scale_boxes
from facefleet.pipeline.spec import PipelineSpec
from facefleet.samples import SampleSpec

SPEC = SampleSpec(width=640, height=360, frames=40, faces=3, gop=15)


@pytest.fixture(scope="module", params=["centerface", "yunet"])
def detector(request):
    return FaceDetector(create_session(get_model(request.param), provider="cpu"), detect_size=640, threshold=0.5)


@pytest.fixture(scope="module")
def anonymized(sample_factory, tmp_path_factory, detector):
    """The sample anonymized with the same detector that then looks for faces again."""
    src, truth = sample_factory(SPEC)
    out = tmp_path_factory.mktemp("anon") / "out.mp4"
    pipeline = PipelineSpec(detector=detector.model.spec.name)
    run_local(JobSpec(job_id="q", input_uri=str(src), output_uri=str(out), pipeline=pipeline, chunk_frames=16))
    return src, out, truth


def detect_all(detector, frames):
    found = []
    for i in range(0, len(frames), 8):
        found.extend(detector.detect(frames[i : i + 8]))
    return found


def test_detector_finds_the_known_faces_in_the_input(anonymized, detector):
    src, _, truth = anonymized
    _, frames = decode_all(src)
    found = detect_all(detector, frames)
    matched = total = 0
    for boxes, dets in zip(truth, found):
        for box in boxes:
            total += 1
            matched += bool(len(dets)) and box_iou(box, dets.boxes).max() > 0.4
    assert total > 60
    assert matched / total >= 0.9


def test_faces_are_not_found_again_in_the_output(anonymized, detector):
    src, out, _ = anonymized
    _, before = decode_all(src)
    _, after = decode_all(out)
    n_before = sum(len(d) for d in detect_all(detector, before))
    n_after = sum(len(d) for d in detect_all(detector, after))
    assert n_before > 60
    assert n_after <= 0.05 * n_before, (n_before, n_after)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_outside_face_regions_output_matches_input(anonymized, detector):
    """PSNR >= 35 dB outside the mask-scaled boxes at the default quality."""
    src, out, _ = anonymized
    _, before = decode_all(src)
    _, after = decode_all(out)
    found = detect_all(detector, before)
    values = []
    for a, b, dets in zip(before, after, found):
        keep = np.ones(a.shape[:2], bool)
        for box in scale_boxes(dets.boxes, 1.3, a.shape[1], a.shape[0]):
            x1, y1, x2, y2 = pixel_box(box)
            keep[max(0, y1 - 2) : y2 + 2, max(0, x1 - 2) : x2 + 2] = False
        values.append(psnr(a[keep], b[keep]))
    assert min(values) >= 35, min(values)
    # and inside the faces the output really differs from the input
    x1, y1, x2, y2 = pixel_box(found[0].boxes[0])
    assert psnr(before[0][y1:y2, x1:x2], after[0][y1:y2, x1:x2]) < 25
