"""Shared fixtures: the face images and sample videos with known faces, and one embedded
Ray for the modules that ask for the same one."""

from __future__ import annotations

import time
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


# --- one embedded Ray for the modules that ask for the same one ----------------------------
#
# A module whose tests run on an embedded Ray of its own (ray_session: 127.0.0.1, fake GPUs)
# names it with SHARED_RAY = (num_cpus, num_gpus) and takes it from the `shared_ray`
# fixture. The modules that name the same one run one after the other (see
# pytest_collection_modifyitems) on one cluster, started for the first of them and shut down
# after the last (pytest_runtest_teardown): each start costs about 3 s and each shutdown 0.4
# s on the 2-core machine. A module gets it as the module before left it once that module's
# fixtures are torn down: no actor alive and every CPU and GPU free, which is waited for.

_shared: dict = {"key": None, "session": None, "info": None}


def _ray_module_key(item) -> tuple | None:
    return getattr(getattr(item, "module", None), "SHARED_RAY", None)


def _stop_shared_ray() -> None:
    session = _shared["session"]
    _shared.update(key=None, session=None, info=None)
    if session is not None:
        session.__exit__(None, None, None)


def _wait_until_idle(timeout_s: float = 60.0) -> None:
    """Until no actor is alive and Ray counts every CPU and GPU free."""
    import ray
    from ray._private import state

    deadline = time.monotonic() + timeout_s
    while True:
        alive = [a for a in state.actors().values() if a["State"] != "DEAD"]
        total, free = ray.cluster_resources(), ray.available_resources()
        if not alive and all(free.get(r, 0) == total.get(r, 0) for r in ("CPU", "GPU")):
            return
        assert time.monotonic() < deadline, f"the shared Ray is not idle: {len(alive)} actor(s) alive, {free} of {total} free"
        time.sleep(0.05)


@pytest.fixture(scope="session")
def shared_ray():
    """get(num_cpus, num_gpus) -> ClusterInfo: the embedded Ray of SHARED_RAY."""
    from facefleet.cluster.runtime import ray_session

    def get(num_cpus: int, num_gpus: int):
        key = (num_cpus, num_gpus)
        if _shared["key"] != key:
            _stop_shared_ray()
            session = ray_session(num_cpus=num_cpus, num_gpus=num_gpus)
            info = session.__enter__()
            _shared.update(key=key, session=session, info=info)
        else:
            _wait_until_idle()
        return _shared["info"]

    yield get
    _stop_shared_ray()


def pytest_collection_modifyitems(session, config, items):
    """The modules that name the same SHARED_RAY one after the other (where the first of them
    is), every other module and every test within a module in its order."""
    modules: list = []
    for item in items:
        if getattr(item, "module", None) not in modules:
            modules.append(getattr(item, "module", None))
    order: list = []
    for module in modules:
        key = getattr(module, "SHARED_RAY", None)
        if module in order:
            continue
        order.append(module)
        if key is not None:
            order += [m for m in modules if m not in order and getattr(m, "SHARED_RAY", None) == key]
    rank = {module: i for i, module in enumerate(order)}
    items.sort(key=lambda item: rank[getattr(item, "module", None)])  # stable: a module's tests keep their order


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # the item's fixtures are torn down, its module's too where it was the last
    if _shared["key"] is not None and _ray_module_key(nextitem) != _shared["key"]:
        _stop_shared_ray()
