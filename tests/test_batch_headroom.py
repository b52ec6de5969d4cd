"""Batch size from GPU memory headroom: halved when memory runs short, back up when it frees."""

from types import SimpleNamespace

import pytest

from facefleet.models.session import CUDA
from facefleet.pipeline.processor import HIGH_HEADROOM, LOW_HEADROOM, Processor, batch_for_headroom
from facefleet.pipeline.spec import PipelineSpec

GIB = 1 << 30


@pytest.mark.parametrize(
    "current, configured, used_gib, expected",
    [
        (16, 16, 75, 8),  # 5 % free: halve before an allocation fails
        (8, 16, 75, 4),
        (1, 16, 79.5, 1),  # never below one
        (16, 16, 40, 16),  # plenty free, already at the configured size
        (4, 16, 40, 8),  # plenty free after a halving: double back
        (8, 16, 20, 16),
        (16, 32, 20, 32),
        (12, 16, 10, 16),  # never past the configured size
        (8, 16, 60, 8),  # 25 % free: between the thresholds, keep
    ],
)
def test_batch_for_headroom(current, configured, used_gib, expected):
    assert batch_for_headroom(current, configured, int(used_gib * GIB), 80 * GIB) == expected


def test_thresholds_are_ordered_and_no_reading_keeps_the_batch():
    assert 0 < LOW_HEADROOM < HIGH_HEADROOM < 1
    assert batch_for_headroom(8, 16, 0, 0) == 8


def test_processor_fits_its_batch_to_memory_and_keeps_the_detector_in_step():
    detector = SimpleNamespace(model=SimpleNamespace(provider=CUDA, on_gpu=True), max_batch=None)
    processor = Processor(PipelineSpec(), detector, make_stages=lambda chunk: [])
    assert processor.batch_size == processor.configured_batch == 16
    assert processor.fit_to_memory(used=76 * GIB, total=80 * GIB) == 8
    assert detector.max_batch == 8  # the detector's calls keep the new shape
    assert processor.fit_to_memory(used=76 * GIB, total=80 * GIB) == 4
    assert processor.fit_to_memory(used=10 * GIB, total=80 * GIB) == 8
    assert processor.fit_to_memory(used=10 * GIB, total=80 * GIB) == 16
    assert processor.fit_to_memory(used=10 * GIB, total=80 * GIB) == 16


class FakeNvml:
    """pynvml's calls that gpu_memory makes, for one GPU."""

    def __init__(self, used: int, total: int, fail: bool = False):
        self.used, self.total, self.fail, self.open = used, total, fail, 0

    def nvmlInit(self):
        if self.fail:
            raise RuntimeError("NVML Shared Library Not Found")
        self.open += 1

    def nvmlShutdown(self):
        self.open -= 1

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid != "GPU-1":
            raise KeyError(uuid)
        return object()

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=self.used, total=self.total, free=self.total - self.used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [SimpleNamespace(pid=111, usedGpuMemory=50 * GIB), SimpleNamespace(pid=222, usedGpuMemory=None)]


def test_gpu_memory_reads_nvml_by_uuid_and_says_none_when_it_cannot():
    from facefleet.cluster.nvml import gpu_memory

    nvml = FakeNvml(used=70 * GIB, total=80 * GIB)
    assert gpu_memory("GPU-1", nvml=nvml) == (70 * GIB, 80 * GIB)
    assert nvml.open == 0  # shut down again
    # the asking worker's own arena (pid 111 holds 50 GiB) is not pressure on it
    assert gpu_memory("GPU-1", pid=111, nvml=nvml) == (20 * GIB, 80 * GIB)
    assert gpu_memory("GPU-1", pid=222, nvml=nvml) == (70 * GIB, 80 * GIB)  # NVML did not say
    assert gpu_memory("GPU-2", nvml=nvml) is None and nvml.open == 0
    assert gpu_memory("GPU-1", nvml=FakeNvml(0, 0, fail=True)) is None


def test_face_stages_follow_memory_too():
    detector = SimpleNamespace(model=SimpleNamespace(provider=CUDA, on_gpu=True), max_batch=None)
    enhancer, recognizer = SimpleNamespace(batch_size=8), SimpleNamespace(batch_size=32)
    processor = Processor(PipelineSpec(), detector, lambda chunk: [], face_batchers=(enhancer, recognizer))
    processor.fit_to_memory(used=78 * GIB, total=80 * GIB)
    assert (processor.batch_size, enhancer.batch_size, recognizer.batch_size) == (8, 4, 16)
    processor.fit_to_memory(used=78 * GIB, total=80 * GIB)
    processor.fit_to_memory(used=8 * GIB, total=80 * GIB)
    processor.fit_to_memory(used=8 * GIB, total=80 * GIB)
    assert (processor.batch_size, enhancer.batch_size, recognizer.batch_size) == (16, 8, 32)
