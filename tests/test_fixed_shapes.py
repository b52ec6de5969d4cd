"""On a GPU every model call keeps one batch shape (zero rows pad a short batch), because
onnxruntime's CUDA convolutions re-plan, for seconds, whenever the shape changes. Here CPU
sessions are labelled as GPU sessions: the calls must keep one shape and give exactly
the results of unpadded calls."""

import cv2
import numpy as np
import pytest

import fakes
from detector_fakes import RecordingSession, shipped_session
from facefleet.models.manifest import get_model
from facefleet.models.session import create_session, pad_rows
from facefleet.pipeline.align import run_batched
from facefleet.pipeline.detect import FaceDetector
from facefleet.pipeline.landmarks import FaceMesh


def as_gpu(model) -> RecordingSession:
    recorder = RecordingSession(model)
    recorder.pads_batches = True
    return recorder


@pytest.fixture(scope="module")
def frames(data_dir):
    faces = [fakes.place(cv2.imread(str(data_dir / name)), x=20 * (i % 2)) for i, name in enumerate(["astronaut.jpg", "biden.jpg", "two_people.jpg"])]
    return [faces[i % 3] for i in range(7)]  # 7 frames: batches of 4 leave a short one


def test_pad_rows_appends_zero_rows_only_when_short():
    x = np.ones((3, 2, 2), np.float32)
    padded = pad_rows(x, 5)
    assert padded.shape == (5, 2, 2) and padded[:3].min() == 1 and padded[3:].max() == 0
    assert pad_rows(x, 3) is x and pad_rows(x, 2) is x


@pytest.mark.parametrize("name", ["centerface", "yunet"])
def test_detector_on_gpu_keeps_one_batch_shape_and_the_same_results(name, frames):
    session = create_session(get_model(name), provider="cpu")
    plain = RecordingSession(session)
    gpu = as_gpu(session)
    expected = FaceDetector(plain, detect_size=640, max_batch=4).detect(frames)
    found = FaceDetector(gpu, detect_size=640, max_batch=4).detect(frames)
    assert plain.batches == [4, 3]
    assert gpu.batches == [4, 4]  # the short batch padded: one shape for every call
    assert [len(d) for d in found] == [len(d) for d in expected] and sum(len(d) for d in found) > 0
    for a, b in zip(found, expected):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_landmarks_on_gpu_keep_one_batch_shape_and_the_same_results(frames):
    detections = FaceDetector(create_session(get_model("centerface"), provider="cpu"), detect_size=640).detect(frames)
    mesh = shipped_session("facemesh_468", free_batch=True)
    faces = sum(len(d) for d in detections)
    assert faces % 4 != 0
    plain, gpu = RecordingSession(mesh), as_gpu(mesh)
    expected = FaceMesh(plain, max_faces=4).landmarks(frames, detections)
    found = FaceMesh(gpu, max_faces=4).landmarks(frames, detections)
    assert set(gpu.batches) == {4} and plain.batches[-1] == faces % 4
    for a, b in zip(found, expected):
        np.testing.assert_allclose(a.points, b.points, atol=1e-3)


def test_face_models_on_gpu_run_in_calls_of_one_size():
    class Doubler:
        """A stand-in face model: output = 2 x input, batch-first."""

        pads_batches = True

        def __init__(self):
            self.batches = []
            self.session = self

        def get_inputs(self):
            class Input:
                shape = ["batch", 3, 4, 4]

            return [Input()]

        def run(self, feeds):
            x = feeds["x"]
            self.batches.append(len(x))
            return [2 * x]

    model = Doubler()
    x = np.random.default_rng(1).random((11, 3, 4, 4)).astype(np.float32)
    out = run_batched(model, "x", x, pad_to=8)
    assert model.batches == [8, 8]
    np.testing.assert_array_equal(out, 2 * x)
    model.pads_batches = False  # on the CPU: as the caller sliced it, no padding
    model.batches.clear()
    np.testing.assert_array_equal(run_batched(model, "x", x[:3], pad_to=8), 2 * x[:3])
    assert model.batches == [3]


def test_processor_pads_the_detector_to_its_batch_size():
    from facefleet.pipeline.processor import build_processor
    from facefleet.pipeline.spec import PipelineSpec

    processor = build_processor(PipelineSpec(batch_size=6))
    assert processor.detector.max_batch == 6
    processor.batch_size = 3  # as after an out-of-memory error
    assert processor.detector.max_batch == 3
