"""The face pipelines end to end without Ray: enhance, reference faces, dense landmarks.

The enhancer and recognizer here are signature-compatible test models built by
tests/fakes.py (an enhancer that inverts colours, a recognizer that is a fixed
projection): they check the wiring, alignment and paste-back, not real enhancement.
"""

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from fakes import enhancer_model, recognizer_model
from localrun import decode_all, run_local

from facefleet.errors import ModelError
from facefleet.jobs.spec import JobSpec
from facefleet.pipeline.processor import build_processor
from facefleet.pipeline.spec import PipelineSpec
from facefleet.samples import SampleSpec

SPEC = SampleSpec(width=320, height=180, frames=24, gop=100)


@pytest.fixture(scope="module")
def test_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "gfpgan_1.4": str(enhancer_model(root / "inverting_enhancer.onnx", mode="invert")),
        "arcface_w600k_r50": str(recognizer_model(root / "projection_recognizer.onnx")),
    }


def test_enhance_step_with_a_signature_compatible_test_model_changes_only_faces(sample_factory, tmp_path, test_models):
    src, truth = sample_factory(SPEC)
    out = tmp_path / "enhanced.mp4"
    pipeline = PipelineSpec(steps=("enhance",), trusted=(("gfpgan_1.4", test_models["gfpgan_1.4"]),))
    job = run_local(JobSpec("e", str(src), str(out), pipeline=pipeline, chunk_frames=12))
    assert next(iter(job.results.values())).providers["enhance"] == "CPUExecutionProvider"
    _, before = decode_all(src)
    _, after = decode_all(out)
    x1, y1, x2, y2 = truth[5][0].astype(int)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    face_before = before[5][cy - 3 : cy + 3, cx - 3 : cx + 3].astype(int)
    face_after = after[5][cy - 3 : cy + 3, cx - 3 : cx + 3].astype(int)
    # 80 % blend of the inverted face: far from the original
    assert np.abs(face_after - face_before).mean() > 40
    # a corner with no face stays as it was (encoding noise only)
    assert np.abs(after[5][:10, -10:].astype(int) - before[5][:10, -10:].astype(int)).mean() < 3


def test_unpinned_enhancer_file_without_trust_is_refused(tmp_path, test_models):
    models = tmp_path / "models"
    models.mkdir()
    (models / "gfpgan_1.4.onnx").write_bytes(open(test_models["gfpgan_1.4"], "rb").read())
    with pytest.raises(ModelError, match="facefleet models import"):
        build_processor(PipelineSpec(steps=("enhance",), models_dir=str(models)))


def test_missing_enhancer_names_the_model_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("FACEFLEET_MODELS", raising=False)
    with pytest.raises(ModelError, match="facefleet models fetch gfpgan_1.4"):
        build_processor(PipelineSpec(steps=("enhance",), models_dir=str(tmp_path / "none")))


def test_reference_face_limits_anonymize_to_that_person(sample_factory, data_dir, tmp_path, test_models):
    """With a reference image, only faces close to it are blurred (projection recognizer:
    identical crops match; the sprites are the same pictures as the reference)."""
    src, truth = sample_factory(SPEC)
    pipeline = PipelineSpec(
        steps=("anonymize", "analyze"),
        reference_face=str(data_dir / "obama.jpg"),
        reference_distance=0.05,
        trusted=(("arcface_w600k_r50", test_models["arcface_w600k_r50"]),),
    )
    out = tmp_path / "ref.mp4"
    processor = build_processor(pipeline, reference_image=cv2.imread(str(data_dir / "obama.jpg")))
    run_local(JobSpec("r", str(src), str(out), pipeline=pipeline), processor=processor)
    faces = pq.read_table(tmp_path / "ref.faces.parquet").to_pylist()
    assert all(len(r["embedding"]) == 512 for r in faces)
    selected = [r for r in faces if r["selected"]]
    others = [r for r in faces if not r["selected"]]
    assert selected and others  # the reference person matched; the other people did not
    _, before = decode_all(src)
    _, after = decode_all(out)
    for rows, expect_blur in ((selected, True), (others, False)):
        r = rows[0]
        cx, cy = int((r["x1"] + r["x2"]) / 2), int((r["y1"] + r["y2"]) / 2)
        diff = np.abs(after[r["frame"]][cy - 3 : cy + 3, cx - 3 : cx + 3].astype(int) - before[r["frame"]][cy - 3 : cy + 3, cx - 3 : cx + 3].astype(int)).mean()
        assert (diff > 8) == expect_blur, (expect_blur, diff)


def test_analyze_with_facemesh_records_468_landmarks(sample_factory, tmp_path):
    src, _ = sample_factory(SPEC)
    out = tmp_path / "mesh.parquet"
    run_local(JobSpec("m", str(src), str(out), pipeline=PipelineSpec(steps=("analyze",), landmarker="facemesh_468")))
    rows = pq.read_table(out).to_pylist()
    detected = [r for r in rows if not r["interpolated"]]
    assert detected and all(len(r["landmarks"]) == 468 * 3 for r in detected)
    r = max(detected, key=lambda r: r["landmark_score"])
    xs, ys = np.array(r["landmarks"][0::3]), np.array(r["landmarks"][1::3])
    inside = (xs > r["x1"] - 10) & (xs < r["x2"] + 10) & (ys > r["y1"] - 10) & (ys < r["y2"] + 10)
    assert inside.mean() > 0.95
