"""A job's settings in the store: every field of its PipelineSpec and EncodeSettings kept
and restored (tuples as tuples, nested dataclasses rebuilt), local paths absolute, no
credentials; jobs stored the old way (submit's options) still run; settings this version
cannot use fail their job with one line that names it."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest

from facefleet.errors import FacefleetError
from facefleet.jobs.store import JobStore
from facefleet.jobs.submit import build_request, dump_settings, job_settings, load_settings
from facefleet.media.encode import EncodeSettings
from facefleet.pipeline.anonymize import AnonymizeOptions
from facefleet.pipeline.spec import PipelineSpec
from facefleet.samples import SampleSpec
from test_jobs import FACEFLEET

# a value other than the default for every field: a field added to PipelineSpec or
# EncodeSettings fails test_every_field_round_trips until it is listed here (and kept)
PIPELINE = {
    "steps": ("enhance", "debug"),
    "detector": "yunet_2023mar",
    "detect_size": 480,
    "threshold": 0.42,
    "detector_angles": (0, 90, 270),
    "anonymize": AnonymizeOptions(replacewith="mosaic", mask_scale=1.6, boxes=True, mosaic_size=9),
    "batch_size": 3,
    "provider": "cpu",
    "precision": "fp16",
    "track": False,
    "landmarker": "2dfan4",
    "recognizer": "arcface_w600k_r50",
    "enhancer": "codeformer",
    "enhancer_blend": 55,
    "enhancer_weight": 0.7,
    "mask_blur": 0.25,
    "mask_padding": (1.0, 2.0, 3.5, 4.0),
    "reference_face": "/faces/me.jpg",
    "reference_distance": 0.45,
    "reference_position": 1,
    "models_dir": "/opt/models",
    "trusted": (("gfpgan_1.4", "/opt/custom/gfpgan.onnx"), ("2dfan4", "/opt/custom/fan.onnx")),
}
ENCODE = {"codec": "libx265", "quality": 80, "preset": "slow", "threads": 4}


def stored(settings: dict) -> dict:
    """Through JSON, as the store keeps it."""
    return json.loads(json.dumps(settings))


def test_every_field_round_trips():
    for cls, values in ((PipelineSpec, PIPELINE), (AnonymizeOptions, dataclasses.asdict(PIPELINE["anonymize"])), (EncodeSettings, ENCODE)):
        default = cls()
        for f in dataclasses.fields(cls):
            assert f.name in values, f"{cls.__name__}.{f.name} has no non-default value in this test"
            assert values[f.name] != getattr(default, f.name), f"{cls.__name__}.{f.name}: the value here is its default"
    pipeline, encode = PipelineSpec(**PIPELINE), EncodeSettings(**ENCODE)
    restored = load_settings(stored(dump_settings(pipeline, encode, 12)))
    assert restored == (pipeline, encode, 12)
    for f in dataclasses.fields(PipelineSpec):
        value = getattr(restored[0], f.name)
        assert type(value) is type(getattr(pipeline, f.name)), f.name
    assert all(type(pair) is tuple for pair in restored[0].trusted)
    hash(restored[0])  # workers key their processors by it
    assert load_settings(stored(dump_settings(PipelineSpec(), EncodeSettings(), 0))) == (PipelineSpec(), EncodeSettings(), 0)


def test_paths_are_stored_absolute_and_trusted_files_as_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "models").symlink_to(tmp_path / "real")
    (tmp_path / "me.jpg").write_bytes(b"")
    (tmp_path / "link.onnx").symlink_to(tmp_path / "real")
    pipeline = PipelineSpec(reference_face="me.jpg", models_dir="models", trusted=(("gfpgan_1.4", "link.onnx"),))
    settings = dump_settings(pipeline, EncodeSettings(), 0)["pipeline"]
    assert settings["reference_face"] == str(tmp_path / "me.jpg")
    assert settings["models_dir"] == str(tmp_path / "real")
    assert settings["trusted"] == [["gfpgan_1.4", str(tmp_path / "link.onnx")]]  # the link itself, not its target


def test_credentials_are_never_stored():
    pipeline = PipelineSpec(models_dir="s3://AKIAKEY:secret/part@bucket/models")
    with pytest.raises(FacefleetError) as refused:
        dump_settings(pipeline, EncodeSettings(), 0)
    assert "secret" not in str(refused.value) and "AKIAKEY" not in str(refused.value)


@pytest.mark.parametrize(
    "settings, reason",
    [
        ({"pipeline": {"turbo": True}}, "unknown field 'turbo'"),
        ({"pipeline": {"anonymize": {"sharpen": 1}}}, "pipeline.anonymize: unknown field 'sharpen'"),
        ({"colour": "red"}, "unknown setting 'colour'"),
        ({"pipeline": {"detect_size": "640"}}, "pipeline.detect_size: expected int"),
        ({"pipeline": {"mask_padding": [1, 2, 3]}}, "expected 4 values"),
        ({"pipeline": {"thresh": 0.3}}, "unknown field 'thresh'"),
        ({"pipeline": {"threshold": 3.0}}, "--thresh must be between 0 and 1"),
        ({"encode": {"preset": "warp"}}, "output_video_preset must be one of"),
        ({"chunk_frames": -1}, "chunk_frames must be 0"),
    ],
)
def test_settings_this_version_cannot_use_are_one_line_naming_the_job(settings, reason):
    with pytest.raises(FacefleetError) as refused:
        job_settings("abc123", {"settings": settings})
    message = str(refused.value)
    assert message.startswith("job abc123: ") and reason in message and "\n" not in message


def test_a_job_stored_without_settings_is_refused_naming_it():
    with pytest.raises(FacefleetError, match="^job abc123: no settings are stored with it$"):
        job_settings("abc123", {"pipeline": "anonymize"})


def test_submit_keeps_its_options_as_the_same_settings_as_run(tmp_path, sample_factory):
    video, _ = sample_factory(SampleSpec(width=160, height=120, frames=8, gop=8, seed=11), name="settings.mp4")
    options = {"pipeline": "enhance", "replacewith": "solid", "thresh": 0.4, "boxes": True, "chunk_frames": 16, "output_video_preset": "fast"}
    request = build_request([str(video)], str(tmp_path / "out"), options, output_root="")
    pipeline = PipelineSpec(steps=("enhance",), threshold=0.4, anonymize=AnonymizeOptions(replacewith="solid", boxes=True))
    assert request.payload()["settings"] == dump_settings(pipeline, EncodeSettings(preset="fast"), 16)
    assert job_settings(request.job_id, stored(request.payload())) == (pipeline, EncodeSettings(preset="fast"), 16)


# a job as `facefleet submit` stored it before the store kept whole settings
OLD_OPTIONS = {
    "pipeline": "anonymize", "replacewith": "solid", "mask_scale": 1.5, "thresh": 0.4, "boxes": True,
    "face_detector_model": "centerface", "detect_size": 320, "track": False, "chunk_frames": 8,
    "output_video_quality": 60, "output_video_preset": "faster",
}


def test_old_stored_options_give_the_same_spec():
    pipeline, encode, chunk_frames = job_settings("old", {"options": OLD_OPTIONS})
    assert pipeline == PipelineSpec(
        detect_size=320, threshold=0.4, track=False, anonymize=AnonymizeOptions(replacewith="solid", mask_scale=1.5, boxes=True)
    )
    assert (encode, chunk_frames) == (EncodeSettings(quality=60, preset="faster"), 8)


def test_resume_runs_an_old_format_job_and_fails_one_it_cannot_read(tmp_path, sample_factory):
    video, _ = sample_factory(SampleSpec(width=160, height=120, frames=24, gop=8, seed=12), name="old job.mp4")
    state = tmp_path / "state"
    old_out, bad_out = tmp_path / "old.mp4", tmp_path / "bad.mp4"
    old = {"job_id": "0ld0ld0ld0ld", "name": "old", "priority": 0, "inputs": [[str(video), str(old_out)]], "options": OLD_OPTIONS}
    bad = {"job_id": "badbadbadbad", "name": "bad", "priority": 0, "inputs": [[str(video), str(bad_out)]],
           "settings": {"pipeline": {"warp_drive": 9}}}
    with JobStore(state) as store:
        for payload in (old, bad):
            store.add_job(payload["job_id"], payload["name"], payload, 0, [tuple(p) for p in payload["inputs"]])
    result = subprocess.run(
        [*FACEFLEET, "run", "--resume", "--state-dir", str(state), "--workers", "1", "--gpu-backend", "simulated"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"ok  {video} -> {old_out}" in result.stdout  # the summary, as a run prints it
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "job badbadbadbad: " in failed[0] and "unknown field 'warp_drive'" in failed[0], result.stdout
    assert old_out.is_file() and not bad_out.exists()
    with JobStore(state, readonly=True) as store:
        assert store.job(old["job_id"]).state == "done" and store.job(bad["job_id"]).state == "failed"
        assert len(store.chunks(old["job_id"])) == 3  # its chunk_frames (8) was used
        assert store.integrity_check() == []
