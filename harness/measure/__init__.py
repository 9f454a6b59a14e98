"""What is measured on the device: a training step (`train_step`), a data loader (`dataloader`)
and device memory (`memory`). Each measure function returns `dict[str, Metric]` keyed by metric
name, with the analytic figure in `Metric.theory` where the formulas have one; the clock they
time with lives in `harness.measure.timing`."""
