"""Shared fixtures: the face images and sample videos with known faces."""

from __future__ import annotations

from pathlib import Path

import pytest

from facefleet.samples import SampleSpec, make_sample_video

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _state_dir(tmp_path_factory, monkeypatch):
    """`facefleet run` keeps every run in a job store under the default state dir: the
    tests' runs (and the processes they start) keep theirs in a temporary one."""
    monkeypatch.setenv("FACEFLEET_STATE", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def sample_factory(tmp_path_factory):
    """make(spec, name) -> (path, truth); videos are cached per spec and name for the whole
    session (a test that names its file gets that name, whoever made the spec first)."""
    cache: dict[tuple[SampleSpec, str | None], tuple[Path, list]] = {}
    root = tmp_path_factory.mktemp("samples")

    def make(spec: SampleSpec = SampleSpec(), name: str | None = None):
        key = (spec, name)
        if key not in cache:
            folder = root / str(len(cache))  # one per video: two specs may share a name
            folder.mkdir()
            path = folder / (name or f"sample.{spec.container}")
            cache[key] = (path, make_sample_video(path, DATA, spec))
        return cache[key]

    return make
