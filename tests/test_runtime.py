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


def test_the_embedded_clusters_autoscaler_monitor_is_killed_before_the_shutdown(monkeypatch):
    # ray.shutdown() gave the monitor 1 s to exit after SIGTERM and it never did (its
    # handler reports to the GCS, already gone), so every embedded run waited that second
    from ray._private import ray_constants, worker

    from facefleet.cluster import runtime

    calls = []
    real_shutdown = ray.shutdown

    def shutdown(*args, **kwargs):
        monitor = worker._global_node.all_processes[ray_constants.PROCESS_TYPE_MONITOR][0].process
        calls.append(monitor.poll())  # its exit status when ray.shutdown starts: None if running
        return real_shutdown(*args, **kwargs)

    monkeypatch.setattr(ray, "shutdown", shutdown)
    with ray_session(num_cpus=1):
        monitor = worker._global_node.all_processes[ray_constants.PROCESS_TYPE_MONITOR][0].process
        assert monitor.poll() is None  # Ray started one
    assert calls and calls[0] is not None  # dead before ray.shutdown ran
    assert not ray.is_initialized()
    assert runtime.stop_autoscaler_monitor() is False  # no embedded Ray: nothing to do
