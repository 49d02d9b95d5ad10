"""Speed and memory measurements of MicroDiT at the paper's shapes (`microdit bench`)."""
import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall-clock time measures it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
