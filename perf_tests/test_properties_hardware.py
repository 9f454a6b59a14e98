"""Properties of the GPU table and the sizing rules: every name resolves to one spec, peaks are
positive and ordered by precision, sizing is deterministic and its d_ff advice is aligned, and
tile/wave quantization never claims more than the GPU can do."""

from __future__ import annotations

import re

from hypothesis import assume, example, given
from hypothesis import strategies as st

from harness.theory.hardware import DTYPES, gpu_spec, known_gpus, normalize_gpu_name
from harness.theory.sizing import (
    TENSOR_CORE_ALIGNMENT,
    gemm_quantization,
    sizing_findings,
    swiglu_ffn_candidates,
)
from harness.theory.zoo import get_model
from perf_tests.strategies import (
    configs_with_layouts,
    gpu_names,
    parallel_layouts,
    transformer_configs,
    workloads,
)

# Slower formats are never faster on the same GPU's matrix units: fp8 >= bf16 >= tf32 >= fp32.
PRECISION_ORDER = ("fp8", "bf16", "tf32", "fp32")


@given(gpu_names())
def test_every_table_name_and_alias_resolves_to_its_own_spec(name):
    spec = gpu_spec(name)
    assert gpu_spec(spec.name) is spec
    assert normalize_gpu_name(name) in {normalize_gpu_name(n) for n in (spec.name, *spec.aliases)}


@given(st.sampled_from(known_gpus()))
def test_peaks_are_positive_and_ordered_by_precision(name):
    spec = gpu_spec(name)
    assert spec.memory_bytes > 0 and spec.memory_bandwidth_bytes_per_s > 0 and spec.num_sms > 0
    peaks = {dtype: spec.peak_flops(dtype) for dtype in spec.dtypes}
    assert peaks and all(peak > 0 for peak in peaks.values())
    present = [peaks[dtype] for dtype in PRECISION_ORDER if dtype in peaks]
    assert present == sorted(present, reverse=True)


@given(st.sampled_from(known_gpus()), st.sampled_from(DTYPES), st.sampled_from(("", "torch.")))
def test_peak_flops_accepts_torch_spellings_and_rejects_missing_dtypes(name, dtype, prefix):
    spec = gpu_spec(name)
    torch_names = {"fp32": "float32", "tf32": "tf32", "bf16": "bfloat16", "fp16": "float16",
                   "fp8": "float8_e4m3fn"}
    spelled = prefix + torch_names[dtype]
    if dtype in spec.dtypes:
        assert spec.peak_flops(spelled) == spec.peak_flops(dtype) == spec.peak_tflops[dtype] * 1e12
    else:
        try:
            spec.peak_flops(spelled)
        except ValueError as error:
            assert spec.name in str(error)
        else:
            raise AssertionError(f"{spec.name} returned a {dtype} peak it does not have")


def _known_keys() -> set[str]:
    return {normalize_gpu_name(n) for name in known_gpus()
            for n in (name, *gpu_spec(name).aliases)}


@given(st.text(min_size=1, max_size=20))
def test_unknown_gpu_names_raise_value_error_naming_the_input(name):
    assume(not name.strip() or normalize_gpu_name(name) not in _known_keys())
    try:
        gpu_spec(name)
    except ValueError as error:
        assert repr(name) in str(error) or not name.strip()
    else:
        raise AssertionError(f"gpu_spec accepted the unknown name {name!r}")


@given(transformer_configs(), workloads(), st.integers(1, 16))
def test_sizing_findings_are_deterministic(cfg, workload, tp):
    assert sizing_findings(cfg, *workload, tp=tp) == sizing_findings(cfg, *workload, tp=tp)


@given(st.integers(1, 16384))
def test_swiglu_ffn_candidates_are_aligned_and_bracket_eight_thirds_h(hidden):
    candidates = swiglu_ffn_candidates(hidden)
    assert candidates == sorted(set(candidates))
    assert all(c > 0 and c % TENSOR_CORE_ALIGNMENT == 0 for c in candidates)
    assert candidates[-1] >= 8 * hidden / 3
    if 8 * hidden / 3 >= TENSOR_CORE_ALIGNMENT:
        assert candidates[0] <= 8 * hidden / 3


def _suggested_widths(suggestion: str) -> list[int]:
    """The d_ff values of an ffn_alignment suggestion: each clause ends in a comma-separated
    list of widths ("benchmark d_ff in 10240, 10752; aligned widths around 8h/3: 10752")."""
    widths = []
    for clause in suggestion.split(";"):
        listed = re.search(r"(\d+(?:, \d+)*)$", clause.strip())
        assert listed, f"no widths in {clause!r}"
        widths.extend(int(width) for width in listed.group(1).split(", "))
    return widths


@given(configs_with_layouts(styles=("llama", "any"), max_hidden=8192), workloads())
@example((get_model("llama-2-7b"), (8, 8, 1)), (1, 4096))
def test_every_d_ff_the_alignment_rule_suggests_passes_that_rule(cfg_and_layout, workload):
    cfg, (_, tp, _) = cfg_and_layout
    finding = {f.rule: f for f in sizing_findings(cfg, *workload, tp)}["ffn_alignment"]
    assume(not finding.ok)
    for width in _suggested_widths(finding.suggestion):
        fixed = {f.rule: f for f in sizing_findings(cfg.replace(ffn_hidden_size=width),
                                                     *workload, tp)}
        assert fixed["ffn_alignment"].ok, (width, tp, finding.suggestion)


@given(transformer_configs(), workloads(), st.data())
def test_alignment_rule_is_silent_exactly_when_it_holds(cfg, workload, data):
    _, tp, _ = data.draw(parallel_layouts(cfg), label="num_gpus, tp, pp")
    for finding in sizing_findings(cfg, *workload, tp):
        assert (finding.suggestion is None) == finding.ok, finding
    ffn = {f.rule: f for f in sizing_findings(cfg, *workload, tp)}["ffn_alignment"]
    assert ffn.ok == (cfg.ffn_size % (TENSOR_CORE_ALIGNMENT * tp) == 0)


@given(st.integers(1, 65536), st.integers(1, 65536), st.integers(1, 65536),
       st.integers(1, 320), st.tuples(st.sampled_from((16, 64, 128, 256)),
                                      st.sampled_from((16, 64, 128, 256))))
def test_gemm_quantization_never_exceeds_the_gpu(m, n, k, num_sms, tile):
    q = gemm_quantization(m, n, k, num_sms, tile)
    assert 0 < q.efficiency <= 1 and 0 < q.tile_efficiency <= 1 and 0 < q.useful_fraction <= 1
    assert q.waves * num_sms >= q.tiles > (q.waves - 1) * num_sms
    assert 1 <= q.last_wave_tiles <= num_sms
    assert q.tiles * tile[0] * tile[1] >= m * n
    assert q.flops == 2 * m * n * k
