"""The reference workloads the GPU suite (perf_tests/) and the benchmarks share: every shape and
size they measure, each with the reason it was chosen, and the builders that make them.

The budget is the whole suite in under 3 minutes on one 80 GB H100, startup included, so every
workload takes milliseconds per call and fits with room to spare. Everything here also runs on
CPU (small shapes), which is how tests/test_suite_workloads.py checks it without a GPU.

    gemm.py        GEMM shapes, random operands, TF32 and FP8 switches
    bounds.py      the datasheet peak and bandwidth a measured fraction is taken of
    models.py      the reference transformer models and `TransformerWorkload`
    training.py    training workloads, one training step, the memory sweep
    real_models.py Hugging Face (Llama-3, Qwen3, Mixtral-style) and timm models from configs
    inference.py   prefill and decode sizes, a KV cache and a KV-cached forward
    dataloader.py  a synthetic image pipeline, its consumer, host buffers for copies
    tolerances.py  the wider tolerances of host-bound measurements, with their evidence
"""
