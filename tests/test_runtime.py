"""The embedded Ray is always a new cluster of its own."""

import ray

from facefleet.cluster.runtime import ray_session


def test_embedded_ray_starts_its_own_cluster_whatever_ray_address_says(monkeypatch):
    # a cluster address in the environment (or one that `ray start` left on this machine)
    # must not be joined by the embedded default; nothing listens on port 9
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    assert not ray.is_initialized()
    with ray_session(num_cpus=1) as info:
        assert info.embedded and info.cpus == 1 and info.nodes == 1
    assert not ray.is_initialized()
