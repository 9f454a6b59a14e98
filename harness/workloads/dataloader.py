"""The input pipeline of the suite: a synthetic image dataset with a fixed CPU cost per image,
loaders over it, a small model that consumes them, the data-wait loop, and host buffers for
host-to-device copies."""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from harness.checks import require_non_negative_int, require_positive_int

# An ImageNet-style sample: 3 x 224 x 224 float32 (588 KiB) and a label among 1000 classes.
IMAGE_SHAPE: tuple[int, int, int] = (3, 224, 224)
NUM_CLASSES = 1000
# ImageNet channel statistics (torchvision's Normalize defaults), used by the transform.
IMAGE_MEAN = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1)
IMAGE_STD = torch.tensor([0.229, 0.224, 0.225]).reshape(3, 1, 1)

# 32 images per batch (19 MB as float32) at ~1 ms of CPU work each: ~30 ms per batch in one
# process, so workers visibly help, and 16 batches per measurement take well under 1 s.
LOADER_BATCH_SIZE = 32
LOADER_STEPS = 16
# measure_dataloader needs steps + 1 batches (one warm-up batch starts the workers).
LOADER_LENGTH = (LOADER_STEPS + 1) * LOADER_BATCH_SIZE
LOADER_WORKER_COUNTS: tuple[int, ...] = (0, 2, 4)
# Two batches in flight per worker: torch's default prefetch_factor, stated so it is visible.
LOADER_PREFETCH = 2

# A labelled image as the dataset yields it and the loader collates it.
Sample = tuple[torch.Tensor, int]


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch ops on one thread inside the block, as DataLoader workers always do (they call
    torch.set_num_threads(1)); the previous thread count is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class SyntheticImages(Dataset[Sample]):
    """Map-style dataset of deterministic images: item i is the same tensor on every call and in
    every worker, and costs a fixed amount of single-threaded CPU work (~1 ms at 224 x 224),
    like the decode and normalisation of a real pipeline.

    The "decode" is SHAKE-128 of the index (single-threaded C), the transform torch ops on one
    thread: the work per item is then the same in the main process (num_workers=0) as in a
    worker, so more workers measure real parallelism, not a change of thread count.
    """

    def __init__(self, length: int, shape: tuple[int, int, int] = IMAGE_SHAPE) -> None:
        require_positive_int("length", length)
        if len(shape) != 3 or shape[0] != 3 or min(shape) <= 0:
            raise ValueError(f"shape must be (3, height, width) with positive sizes, "
                             f"got {shape!r}")
        self.length = length
        self.shape = shape

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        # "Decode": 8-bit pixels, a deterministic pseudo-random stream seeded by the index.
        raw = hashlib.shake_128(index.to_bytes(8, "little")).digest(math.prod(self.shape))
        with _one_thread():
            pixels = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(self.shape)
            # The usual transform: scale to [0, 1], normalise per channel, horizontal flip.
            image = ((pixels.float() / 255.0 - IMAGE_MEAN) / IMAGE_STD).flip(-1)
        return image, index % NUM_CLASSES


def image_loader(num_workers: int, *, length: int = LOADER_LENGTH,
                 batch_size: int = LOADER_BATCH_SIZE, pin_memory: bool = True,
                 shape: tuple[int, int, int] = IMAGE_SHAPE) -> DataLoader[Sample]:
    """A DataLoader over `SyntheticImages` as training uses one: pinned batches, and with
    workers, persistent workers with two batches prefetched each."""
    require_non_negative_int("num_workers", num_workers)
    dataset = SyntheticImages(length, shape)
    if num_workers > 0:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False,
                          num_workers=num_workers, pin_memory=pin_memory, drop_last=True,
                          persistent_workers=True, prefetch_factor=LOADER_PREFETCH)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                      pin_memory=pin_memory, drop_last=True)


class SmallConvNet(nn.Module):
    """A small image classifier (patchify stem, four 3x3 conv blocks, pooled linear head): a
    few milliseconds of GPU work per 32-image batch, the consumer of the data-wait test."""

    def __init__(self, width: int = 64, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        # 4x4 stride-4 patches: 224 -> 56 pixels, as ConvNeXt's stem.
        layers: list[nn.Module] = [nn.Conv2d(3, width, kernel_size=4, stride=4), nn.GELU()]
        for _ in range(4):
            layers += [nn.Conv2d(width, width, kernel_size=3, padding=1), nn.GELU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits, (batch, num_classes), for images of shape (batch, 3, height, width)."""
        logits: torch.Tensor = self.head(self.features(images).mean(dim=(2, 3)))
        return logits


# Steps of the data-wait measurement: 24 batches of 32 images with 2 workers take ~0.5 s.
DATA_WAIT_STEPS = 24
DATA_WAIT_LENGTH = (DATA_WAIT_STEPS + 1) * LOADER_BATCH_SIZE


def data_wait_fractions(model: nn.Module, loader: DataLoader[Sample],
                        optimizer: torch.optim.Optimizer, *, steps: int,
                        device: str) -> list[float]:
    """Train `model` on `steps` batches of `loader` and return, per step, the fraction of the
    step's wall time spent blocked waiting for the batch.

    A step is: wait for the batch (host), copy it with non_blocking=True, forward under bf16
    autocast on CUDA, cross-entropy, backward, optimizer step, then synchronise so the step's
    wall time includes its GPU work (as a loop that logs its loss every step does). One
    untimed first step starts the workers and pays one-time costs.
    """
    require_positive_int("steps", steps)
    if len(loader) < steps + 1:
        raise ValueError(f"the loader has {len(loader)} batches, but steps={steps} needs "
                         f"{steps + 1} (one untimed first step plus {steps})")
    device_type = torch.device(device).type

    def train_on(images: torch.Tensor, labels: torch.Tensor) -> None:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16)
                    if device_type == "cuda" else contextlib.nullcontext())
        with autocast:
            loss = F.cross_entropy(model(images), labels)
        torch.autograd.backward(loss)  # the typed spelling of loss.backward()
        optimizer.step()
        if device_type == "cuda":
            torch.cuda.synchronize(device)

    iterator = iter(loader)
    train_on(*next(iterator))
    fractions: list[float] = []
    for _ in range(steps):
        started = time.perf_counter()
        images, labels = next(iterator)
        waited = time.perf_counter() - started
        train_on(images, labels)
        fractions.append(waited / (time.perf_counter() - started))
    return fractions


# 256 MiB per copy: ~5 ms over PCIe Gen5 from pinned memory, long enough that launch and event
# overhead vanish, small enough to pin without straining the host.
H2D_BYTES = 256 * 2**20

# Random bytes are drawn for one 1 MiB block and tiled: drawing all 256 MiB with torch's serial
# CPU generator takes seconds, copying the block takes milliseconds, and every page is touched
# either way.
RANDOM_BLOCK_BYTES = 2**20


def host_buffer(nbytes: int, *, pinned: bool, seed: int = 0) -> torch.Tensor:
    """A host byte buffer filled with random bytes, pinned (page-locked) or pageable. Real
    content makes every page resident: untouched pages of a fresh allocation are all mapped to
    the kernel's shared zero page and would not measure a real copy."""
    require_positive_int("nbytes", nbytes)
    generator = torch.Generator().manual_seed(seed)
    block = torch.randint(0, 256, (min(nbytes, RANDOM_BLOCK_BYTES),), dtype=torch.uint8,
                          generator=generator)
    buffer = block.repeat(math.ceil(nbytes / block.numel()))[:nbytes].clone()
    return buffer.pin_memory() if pinned else buffer
