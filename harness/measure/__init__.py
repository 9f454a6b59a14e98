"""What is measured on the device: timed functions, training steps, memory, dataloaders."""
