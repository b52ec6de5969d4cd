"""Shared fixtures: the face images and sample videos with known faces."""

from __future__ import annotations

from pathlib import Path

import pytest

from facefleet.samples import SampleSpec, make_sample_video

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def sample_factory(tmp_path_factory):
    """make(spec) -> (path, truth); videos are cached per spec for the whole session."""
    cache: dict[SampleSpec, tuple[Path, list]] = {}
    root = tmp_path_factory.mktemp("samples")

    def make(spec: SampleSpec = SampleSpec(), name: str | None = None):
        if spec not in cache:
            path = root / (name or f"sample{len(cache)}.{spec.container}")
            cache[spec] = (path, make_sample_video(path, DATA, spec))
        return cache[spec]

    return make
