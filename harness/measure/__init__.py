"""What is measured on the device, and how.

The clock (`clocks`) and the sampling rules (`sampling`) time any function, with short garbage
collections between tests (`garbage`); on top of them a
training step (`step` for any step function, `train_step` for a model, loss and optimizer,
their FLOPs counted by `flop_count`), a data loader (`dataloader`), device memory and what of
it belongs to a test (`memory`), collectives (`collectives`) and where a step's device time
goes (`kernels`). Each measure function returns `dict[str, Metric]` keyed by metric name, with
the analytic figure in `Metric.theory` where the formulas have one. Around every measurement
the GPU's state is read (`gpu_state`); the run as a whole records its environment
(`environment`), the GPUs it sees (`devices`) and the host it ran on (`host`).
"""
