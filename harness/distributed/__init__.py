"""Several GPUs: the torchrun launch, the process group with its lockstep clock and agreement, and
the DDP/FSDP helpers the distributed tests use."""
