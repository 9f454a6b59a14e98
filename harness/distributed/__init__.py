"""Several GPUs: the torchrun launch (`launch`, no torch), the process group with its lockstep
clock and agreement between ranks (`group`), and the DDP/FSDP helpers the distributed tests use
(`training`). The collectives measured live in `harness.measure.collectives`."""
