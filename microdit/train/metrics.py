"""What the trainer reports: JSONL metric lines, throughput and model FLOPs utilisation, the end-of-stage stats."""
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense bf16 tensor-core peak per GPU, by substring of torch.cuda.get_device_name() (first match wins, so the more
# specific name comes first); MFU is reported only for these.
PEAK_BF16_FLOPS = {"H200": 989.4e12, "H100 PCIe": 756e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def train_flops_per_sample(loss_fn, batch: dict) -> float:
    """FLOPs of forward + backward for one sample, counted on one real microbatch (MoE routing and masking
    included), before the model is wrapped or compiled."""
    with FlopCounterMode(display=False) as counter:
        loss_fn(batch).backward()
    return counter.get_total_flops() / batch["latents"].shape[0]


def memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


class MetricsLog:
    """Appends one JSON object per line, and its numbers to TensorBoard event files in the same folder (for
    `tensorboard --logdir`); rank 0 only. Appending keeps the lines of earlier (preempted) attempts; TensorBoard
    drops their events from `first_step` on, which this attempt writes again."""

    def __init__(self, path: Path, enabled: bool, first_step: int = 0):
        self.path, self.enabled, self.first_step = Path(path), enabled, first_step
        self._board = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def board(self):
        if self._board is None:  # on first use: a finished stage that only returns its stats writes no event file
            from torch.utils.tensorboard import SummaryWriter

            self._board = SummaryWriter(str(self.path.parent), purge_step=self.first_step, flush_secs=30)
        return self._board

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):  # None: not measured here (MFU on a CPU)
                    self.board().add_scalar(key, value, record["step"])

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """A (3,H,W) image in [0,1], shown under `tag` in TensorBoard's images tab."""
        if self.enabled:
            self.board().add_image(tag, image, step)

    def close(self) -> None:
        if self._board is not None:
            self._board.close()


class Throughput:
    """Images per second over the window since the last report, and over the whole run."""

    def __init__(self, flops_per_sample: float | None, peak: float | None, world_size: int):
        self.flops_per_sample, self.peak, self.world_size = flops_per_sample, peak, world_size
        self.start = self.mark = time.perf_counter()
        self.images = self.window_images = 0
        self.excluded = 0.0

    def add(self, images: int) -> None:
        self.images += images
        self.window_images += images

    def report(self) -> dict:
        now = time.perf_counter()
        rate = self.window_images / max(now - self.mark, 1e-9)
        self.mark, self.window_images = now, 0
        return {"img_per_s": rate, "mfu": self.mfu(rate)}

    def exclude(self, seconds: float) -> None:
        """Leave time spent on other work (the held-out loss) out of the rates; `elapsed` (wall time) keeps it."""
        self.mark += seconds
        self.excluded += seconds

    def mean_rate(self) -> float:
        return self.images / max(time.perf_counter() - self.start - self.excluded, 1e-9)

    def mfu(self, rate: float) -> float | None:
        if not (self.flops_per_sample and self.peak):
            return None
        return rate * self.flops_per_sample / (self.peak * self.world_size)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
