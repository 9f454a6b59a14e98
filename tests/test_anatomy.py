"""The anatomy of a step: kernel names sorted into classes of work, grouped so that the same work
matches across library heuristics, and a profile's parts adding up to its step."""

from __future__ import annotations

import pytest

from harness.gate.anatomy import (
    CLASSES,
    anatomy,
    class_seconds,
    kernel_class,
    kernel_key,
    step_seconds,
)
from harness.gate.profile import DeviceProfile, KernelRow

XMMA_TN = ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_"
           "execute_segment_k_off_kernel__5x_cublas")
XMMA_NT = ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_nt_n_tilesize256x128x64_warpgroupsize2x1x1_"
           "execute_segment_k_off_kernel__5x_cublas")
NVJET_TN = "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT"
AMPERE_TN = "ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_64x3_tn"
MUL = ("void at::native::vectorized_elementwise_kernel<4, at::native::BinaryFunctor<float, "
       "float, float, at::native::binary_internal::MulFunctor<float> >, std::array<char*, 3ul> "
       ">(int, at::native::BinaryFunctor<float, float, float, at::native::binary_internal::"
       "MulFunctor<float> >, std::array<char*, 3ul>)")
MUL_UNROLLED = ("void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<"
                "at::native::AUnaryFunctor<float, float, float, at::native::binary_internal::"
                "MulFunctor<float> > >(at::TensorIteratorBase&, at::native::AUnaryFunctor<float, "
                "float, float, at::native::binary_internal::MulFunctor<float> > const&)::"
                "{lambda(int)#1}>(int, ...)")
ADD = ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, "
       "std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<float>, std::array<char*, 3ul>)")
SUM = ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::"
       "func_wrapper_t<float, at::native::sum_functor<float, float, float>::operator()(at::"
       "TensorIterator&)::{lambda(float, float)#1}>, unsigned int, float, 4, 4> >(x)")
LAYER_NORM = ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, "
              "float>(int, float, float const*, float const*, float const*, float*, float*, "
              "float*)")
FUSED_ADAM = ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::"
              "(anonymous namespace)::TensorListMetadata<4>, at::native::(anonymous namespace)::"
              "FusedAdamMathFunctor<float, 4, (at::native::ADAM_MODE)1, false>, float*>(x)")
FLASH_FWD = ("void pytorch_flash::flash_fwd_kernel<pytorch_flash::Flash_fwd_kernel_traits<64, "
             "128, 128, 4, false, false, cutlass::bfloat16_t> >(pytorch_flash::Flash_fwd_params)")
FLASH_BWD = ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<pytorch_flash::"
             "Flash_bwd_kernel_traits<64> >(pytorch_flash::Flash_bwd_params)")
NCCL = "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)"


@pytest.mark.parametrize(("name", "klass"), [
    (XMMA_TN, "contraction"), (NVJET_TN, "contraction"), (AMPERE_TN, "contraction"),
    (FLASH_FWD, "contraction"), (FLASH_BWD, "contraction"),
    ("void splitKreduce_kernel<32, 16, int, float>(cublasSplitKParams<float>)", "contraction"),
    (LAYER_NORM, "normalisation"), (SUM, "normalisation"),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float>(float*)",
     "normalisation"),
    ("triton_red_fused_native_layer_norm_3", "normalisation"),
    (MUL, "elementwise"), (ADD, "elementwise"), ("triton_poi_fused_add_mul_0", "elementwise"),
    ("Memcpy HtoD (Pageable -> Device)", "memcpy"), ("Memset (Device)", "memcpy"),
    (NCCL, "communication"), (FUSED_ADAM, "optimizer"),
    ("some_custom_kernel(float*)", "other"), ("(other 12 kernels)", "other"),
])
def test_kernel_names_fall_into_their_class_of_work(name: str, klass: str) -> None:
    assert kernel_class(name) == klass


def test_gemms_of_one_layout_share_a_key_across_cublas_heuristics() -> None:
    # cuBLAS picks the family and tile per shape and version; the layout is the GEMM's role.
    assert kernel_key(XMMA_TN) == kernel_key(NVJET_TN) == kernel_key(AMPERE_TN) == "gemm tn"
    assert kernel_key(XMMA_NT) == "gemm nt"


def test_elementwise_kernels_group_by_their_op_not_their_launcher() -> None:
    assert kernel_key(MUL) == kernel_key(MUL_UNROLLED) == "elementwise mul"
    assert kernel_key(ADD) == "elementwise add"
    assert kernel_key(SUM) == "reduce sum"
    assert kernel_key(FUSED_ADAM) == "multi_tensor_apply fusedadammath"


def test_other_kernels_keep_their_function_name_without_templates_or_indices() -> None:
    assert kernel_key(LAYER_NORM) == "vectorized_layer_norm_kernel"
    assert kernel_key("triton_poi_fused_add_mul_0") == kernel_key("triton_poi_fused_add_mul_7")
    assert kernel_key(FLASH_FWD) == "attention forward"
    assert kernel_key(FLASH_BWD) == "attention backward"
    assert kernel_key(NCCL) == "nccl allreduce"
    assert kernel_key("Memcpy DtoD (Device -> Device)") == "Memcpy DtoD"


def test_class_seconds_lists_every_class() -> None:
    totals = class_seconds([(XMMA_TN, 0.03), (NVJET_TN, 0.01), (MUL, 0.005)])
    assert set(totals) == set(CLASSES)
    assert totals["contraction"] == pytest.approx(0.04)
    assert totals["elementwise"] == pytest.approx(0.005) and totals["memcpy"] == 0


def profile(rows: list[KernelRow], *, device: float, idle: float,
            phases: dict[str, float] | None = None, classified: bool = True) -> DeviceProfile:
    return DeviceProfile(steps=5, device_seconds=device, idle_fraction=idle,
                         host_issue_seconds=None, kernels=tuple(rows),
                         classes=class_seconds((r.name, r.seconds_per_step) for r in rows)
                         if classified else {}, phases=phases or {})


def test_classes_plus_idle_minus_overlap_make_the_step() -> None:
    # 50 ms of kernels of which 5 ms ran beside others (45 ms busy), at 10% idle: a 50 ms step.
    step = profile([KernelRow(XMMA_TN, 4, 0.030), KernelRow(MUL, 10, 0.015),
                    KernelRow(NCCL, 1, 0.005)], device=0.045, idle=0.10)
    parts = anatomy(step)
    assert parts.step_seconds == pytest.approx(0.050) == step_seconds(step)
    assert parts.idle_seconds == pytest.approx(0.005)
    assert parts.overlap_seconds == pytest.approx(0.005)
    total = sum(parts.classes.values()) + parts.idle_seconds - parts.overlap_seconds
    assert total == pytest.approx(parts.step_seconds)
    assert parts.idle_share == pytest.approx(0.10)
    assert parts.contraction_time_share == pytest.approx(0.6)
    assert not parts.from_table


def test_an_older_profile_without_classes_is_classified_from_its_table() -> None:
    step = profile([KernelRow(XMMA_TN, 4, 0.030), KernelRow("(other 9 kernels)", 9, 0.002)],
                   device=0.032, idle=0.0, classified=False)
    parts = anatomy(step)
    assert parts.from_table
    assert parts.classes["contraction"] == pytest.approx(0.030)
    assert parts.classes["other"] == pytest.approx(0.002)
    assert parts.backward_forward_ratio is None and not parts.phases


def test_backward_over_forward_comes_from_the_phases() -> None:
    step = profile([KernelRow(XMMA_TN, 4, 0.030)], device=0.030, idle=0.0,
                   phases={"forward": 0.010, "backward": 0.019, "optimizer": 0.001})
    assert anatomy(step).backward_forward_ratio == pytest.approx(1.9)
