"""The theory: what a model should cost (parameters, FLOPs, memory, communication) and what a GPU
can do at best. Pure Python: nothing here imports torch, and nothing outside `harness.theory` and
`harness.checks`.

Imports run one way: moe, mla (the expert and latent-attention parts) <- config
(TransformerConfig and its parameter counts) <- zoo, hf_keys <- hf_models <- hf, params <- flops,
parallel, sizing <- memory/ <- comm <- estimate (the typed `Estimate`); units (byte units,
ceil_div) is under them all, hardware (the GPU table) needs only units.
"""
