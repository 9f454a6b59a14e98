"""The GPU table, name matching, registration and fingerprints of `harness.theory.hardware`, and
GPU detection (`harness.measure.devices`)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from harness.measure import devices
from harness.measure.devices import DetectedGPU, detect_gpus, local_spec
from harness.theory import hardware
from harness.theory.hardware import (
    GPUSpec,
    fingerprint,
    gpu_spec,
    known_gpus,
    normalize_gpu_name,
    register_gpu,
)


@pytest.fixture
def private_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test register GPUs without changing the table other tests see."""
    monkeypatch.setattr(hardware, "_REGISTRY", dict(hardware._REGISTRY))


def custom_spec(name: str = "Acme X1", aliases: tuple[str, ...] = ()) -> GPUSpec:
    return GPUSpec(name=name, vendor="Acme", memory_bytes=64 * 2**30,
                   memory_bandwidth_bytes_per_s=2e12, num_sms=100,
                   peak_tflops={"bf16": 500.0, "fp32": 50.0}, l2_cache_bytes=32 * 2**20,
                   aliases=aliases)


@pytest.mark.parametrize(("name", "expected"), [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM4 80GB"),
    ("NVIDIA A100-SXM4-40GB", "A100 SXM4 40GB"),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"),
    ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40GB"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA A800-SXM4-80GB", "A800 SXM4 80GB"),
    ("NVIDIA H800", "H800 SXM"),
    ("NVIDIA H800 PCIe", "H800 PCIe"),
    ("NVIDIA H20", "H20"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA L4", "L4"),
    ("NVIDIA A10", "A10"),
    ("Tesla V100-SXM2-32GB", "V100 SXM2 32GB"),
    ("NVIDIA B200", "B200"),
    ("NVIDIA GB200", "GB200"),
    ("AMD Instinct MI300X", "MI300X"),
    ("AMD Instinct MI250X/MI250", "MI250X GCD"),
])
def test_nvml_and_rocm_names_find_their_spec(name: str, expected: str) -> None:
    assert gpu_spec(name).name == expected


@pytest.mark.parametrize(("name", "expected"), [
    ("H100", "H100 SXM"), ("h100", "H100 SXM"), ("a800", "A800 SXM4 80GB"),
    ("h200", "H200 SXM"), ("A100", "A100 SXM4 80GB"), ("mi300x", "MI300X"),
    ("  nvidia   h100_sxm5 ", "H100 SXM"),
])
def test_short_names_mean_the_training_part_of_a_family(name: str, expected: str) -> None:
    assert gpu_spec(name).name == expected


def test_names_match_exactly_after_normalisation_never_by_substring() -> None:
    assert normalize_gpu_name("NVIDIA A100-SXM4-80GB") == "a100 sxm4 80gb"
    assert normalize_gpu_name("AMD Instinct MI300X") == "mi300x"
    assert gpu_spec("A10").name == "A10"  # not an A100
    for near_miss in ("H10", "NVIDIA H100 80GB", "H100X", "A1000"):
        with pytest.raises(ValueError, match="unknown GPU"):
            gpu_spec(near_miss)


def test_unknown_gpu_error_names_it_lists_known_ones_and_how_to_register() -> None:
    with pytest.raises(ValueError) as error:
        gpu_spec("NVIDIA RTX 4090")
    message = str(error.value)
    assert "unknown GPU 'NVIDIA RTX 4090'" in message
    assert "H100 SXM" in message and "MI300X" in message
    assert "register_gpu(GPUSpec(" in message


def test_peaks_are_dense_not_sparse() -> None:
    h100 = gpu_spec("H100")
    assert h100.peak_flops("bf16") == pytest.approx(989.4e12)
    assert h100.peak_flops("fp8") == pytest.approx(1978.9e12)
    assert h100.peak_flops("tf32") == pytest.approx(494.7e12)
    assert gpu_spec("H100 PCIe").peak_flops("bf16") == pytest.approx(756.4e12)
    assert gpu_spec("H100 NVL").peak_flops("bf16") == pytest.approx(835.5e12)
    a100 = gpu_spec("A100")
    assert (a100.peak_flops("bf16"), a100.peak_flops("tf32"), a100.peak_flops("fp32")) == \
        pytest.approx((312e12, 156e12, 19.5e12))


def test_h200_has_h100_compute_with_more_and_faster_memory() -> None:
    h100, h200 = gpu_spec("H100"), gpu_spec("H200")
    assert dict(h200.peak_tflops) == dict(h100.peak_tflops)
    assert h200.memory_bytes == 141 * 2**30
    assert h200.memory_bandwidth_bytes_per_s == pytest.approx(4.8e12)
    assert h100.memory_bandwidth_bytes_per_s == pytest.approx(3.35e12)


@pytest.mark.parametrize("dtype", ["bfloat16", "torch.bfloat16", torch.bfloat16, "BF16"])
def test_peak_flops_accepts_torch_dtype_names(dtype: object) -> None:
    assert gpu_spec("H100").peak_flops(dtype) == pytest.approx(989.4e12)  # type: ignore[arg-type]


def test_peak_flops_maps_float16_and_float32() -> None:
    h100 = gpu_spec("H100")
    assert h100.peak_flops(torch.float16) == h100.peak_flops("fp16")
    assert h100.peak_flops("float32") == pytest.approx(66.9e12)


def test_a_dtype_the_gpu_lacks_lists_the_dtypes_it_has() -> None:
    with pytest.raises(ValueError, match=r"V100 SXM2 32GB has no bf16 peak .*; it has fp32, fp16"):
        gpu_spec("V100").peak_flops("bf16")
    with pytest.raises(ValueError, match=r"A100 SXM4 80GB has no fp8 peak"):
        gpu_spec("A100").peak_flops("float8_e4m3fn")


def test_an_unknown_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match=r"dtype 'int8' is not one of fp32, tf32, bf16"):
        gpu_spec("H100").peak_flops("int8")


@pytest.mark.parametrize("name", known_gpus())
def test_every_table_entry_is_self_consistent(name: str) -> None:
    spec = gpu_spec(name)
    assert spec.peak_flops(spec.dtypes[0]) > 0
    if "bf16" in spec.peak_tflops:
        assert spec.peak_tflops["bf16"] == spec.peak_tflops["fp16"]
        assert spec.peak_tflops["bf16"] > spec.peak_tflops["fp32"]
    if "fp8" in spec.peak_tflops:
        assert spec.peak_tflops["fp8"] > spec.peak_tflops["bf16"]
    assert spec.l2_cache_bytes < spec.memory_bytes


def test_register_gpu_adds_a_spec_under_its_aliases(private_registry: None) -> None:
    spec = custom_spec(aliases=("Acme Accelerator X1",))
    register_gpu(spec)
    assert gpu_spec("acme-x1") is spec
    assert gpu_spec("ACME accelerator x1") is spec
    assert "Acme X1" in known_gpus()


def test_register_gpu_refuses_a_taken_name_unless_replace(private_registry: None) -> None:
    clash = custom_spec(name="My H100", aliases=("H100",))
    with pytest.raises(ValueError, match=r"'h100' \(H100 SXM\) already known; pass replace=True"):
        register_gpu(clash)
    assert gpu_spec("H100").name == "H100 SXM"
    register_gpu(clash, replace=True)
    assert gpu_spec("H100") is clash


def test_registration_is_not_visible_outside_the_fixture() -> None:
    with pytest.raises(ValueError, match="unknown GPU"):
        gpu_spec("Acme X1")


def test_gpu_spec_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="GPUSpec.memory_bytes must be a positive integer"):
        GPUSpec(name="x", vendor="y", memory_bytes=0, memory_bandwidth_bytes_per_s=1.0,
                num_sms=1, peak_tflops={"bf16": 1.0}, l2_cache_bytes=1)
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        GPUSpec(name="x", vendor="y", memory_bytes=1, memory_bandwidth_bytes_per_s=1.0,
                num_sms=1, peak_tflops={"int8": 1.0}, l2_cache_bytes=1)
    with pytest.raises(ValueError, match=r"peak_tflops\['bf16'\] must be a positive finite number"):
        GPUSpec(name="x", vendor="y", memory_bytes=1, memory_bandwidth_bytes_per_s=1.0,
                num_sms=1, peak_tflops={"bf16": -1.0}, l2_cache_bytes=1)


@pytest.mark.parametrize(("name", "count", "expected"), [
    ("NVIDIA H200", 1, "nvidia-h200"),
    ("NVIDIA H200", 2, "nvidia-h200-x2"),
    ("NVIDIA H100 80GB HBM3", 1, "nvidia-h100-80gb-hbm3"),
    ("NVIDIA A100-SXM4-80GB", 8, "nvidia-a100-sxm4-80gb-x8"),
    ("AMD Instinct MI250X/MI250", 1, "amd-instinct-mi250x-mi250"),
    ("cpu", 1, "cpu"),
])
def test_fingerprint_slugs_name_and_count(name: str, count: int, expected: str) -> None:
    assert fingerprint(name, count) == expected


def test_fingerprint_rejects_empty_names_and_counts() -> None:
    with pytest.raises(ValueError, match="count must be a positive integer"):
        fingerprint("NVIDIA H200", 0)
    with pytest.raises(ValueError, match="no letters or digits"):
        fingerprint(" / ", 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path of this machine")
def test_detect_gpus_finds_nothing_on_this_machine_without_cuda() -> None:
    assert detect_gpus() == []


def test_detect_gpus_returns_empty_when_neither_torch_nor_nvml_see_a_gpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_init() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "pynvml", SimpleNamespace(nvmlInit=failing_init))
    assert detect_gpus() == []


def test_detect_gpus_reads_torch_device_properties(monkeypatch: pytest.MonkeyPatch) -> None:
    properties = [SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=85_520_809_984,
                                  multi_processor_count=132, uuid=f"GPU-{i}") for i in range(2)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: properties[i])
    assert detect_gpus() == [
        DetectedGPU(index=i, name="NVIDIA H100 80GB HBM3", memory_bytes=85_520_809_984,
                    num_sms=132, uuid=f"GPU-{i}") for i in range(2)]


def test_detect_gpus_falls_back_to_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    fake_nvml = SimpleNamespace(
        nvmlInit=lambda: calls.append("init"),
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda handle: b"NVIDIA H200",
        nvmlDeviceGetMemoryInfo=lambda handle: SimpleNamespace(total=150_754_820_096),
        nvmlDeviceGetUUID=lambda handle: "GPU-abc",
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml)
    assert detect_gpus() == [DetectedGPU(index=0, name="NVIDIA H200", memory_bytes=150_754_820_096,
                                         uuid="GPU-abc")]
    assert calls == ["init", "shutdown"]


def test_local_spec_looks_up_the_detected_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "detect_gpus", lambda: [
        DetectedGPU(index=0, name="NVIDIA H100 80GB HBM3", memory_bytes=85_520_809_984,
                    num_sms=132)])
    assert local_spec().name == "H100 SXM"
    with pytest.raises(ValueError, match=r"index=1 but only 1 GPU\(s\) are visible"):
        local_spec(1)


def test_local_spec_refuses_a_gpu_whose_sm_count_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    # An MI250 GCD (104 CUs) reports the same name as an MI250X GCD (110 CUs).
    monkeypatch.setattr(devices, "detect_gpus", lambda: [
        DetectedGPU(index=0, name="AMD Instinct MI250X/MI250", memory_bytes=64 * 2**30,
                    num_sms=104)])
    with pytest.raises(ValueError, match=r"has 104 SMs but the table's MI250X GCD has 110"):
        local_spec()


def test_local_spec_without_a_gpu_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "detect_gpus", lambda: [])
    with pytest.raises(ValueError, match="no GPU detected"):
        local_spec()


@pytest.mark.parametrize(("name", "gb_per_s"), [
    ("H100", 450), ("H200", 450), ("A100", 300), ("A800", 200), ("H800", 200),
    ("H100 PCIe", 64), ("A100 PCIe", 32), ("L40S", 32), ("B200", 900), ("MI300X", 448),
])
def test_interconnect_bandwidth_is_the_one_way_half_of_the_datasheet_figure(
        name: str, gb_per_s: float) -> None:
    assert gpu_spec(name).interconnect_bandwidth_bytes_per_s == gb_per_s * 1e9


def test_interconnect_bandwidth_is_optional_and_unknown_where_no_single_figure_holds() -> None:
    assert custom_spec().interconnect_bandwidth_bytes_per_s is None
    assert gpu_spec("MI250X").interconnect_bandwidth_bytes_per_s is None


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), True, "450e9"])
def test_gpu_spec_refuses_a_bad_interconnect_bandwidth(bad: object) -> None:
    with pytest.raises(ValueError, match=r"interconnect_bandwidth_bytes_per_s must be a positive "
                                         r"finite number, got"):
        GPUSpec(name="x", vendor="y", memory_bytes=1, memory_bandwidth_bytes_per_s=1.0,
                num_sms=1, peak_tflops={"bf16": 1.0}, l2_cache_bytes=1,
                interconnect_bandwidth_bytes_per_s=bad)  # type: ignore[arg-type]
