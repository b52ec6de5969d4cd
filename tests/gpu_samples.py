"""A real-looking GPU sample (an H100 as NVML reports it), for the exporter and monitor tests."""

from __future__ import annotations

from facefleet.cluster.nvml import GIB, GpuSample

H100 = "NVIDIA H100 80GB HBM3"


def h100_sample(when: float, uuid: str, index: int = 0, node: str = "head", **values) -> GpuSample:
    """Defaults: 57 % busy, 30.5 of 80 GiB, 412 W, 61 °C, no NVENC (None), no throttling;
    `values` overrides any GpuSample field."""
    fields = dict(
        time=when,
        node=node,
        gpu_uuid=uuid,
        gpu_index=index,
        name=H100,
        utilization_gpu=57.0,
        utilization_memory=10.0,
        memory_used=int(30.5 * GIB),
        memory_total=80 * GIB,
        power_w=412.0,
        temperature_c=61.0,
        sm_clock_mhz=1980.0,
        encoder=None,  # the H100 has no NVENC
        decoder=0.0,
        throttle_reasons=(),
        sm_activity=None,
    )
    return GpuSample(**{**fields, **values})
