"""Process-group setup and model wrapping: one process per GPU (or per CPU task), NCCL on GPU, gloo on CPU.

Where a process sits comes from one place, `export_layout`: torchrun's variables when it started the process, else
submitit's TorchDistributedEnvironment (a submitit job on SLURM or local processes, or a task of a plain srun).
The layout goes into the environment whole, LOCAL_WORLD_SIZE included: mosaicml-streaming reads it there to tell the
ranks of one node (which share one shared-memory block) from those of another.
"""
import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from submitit.helpers import TorchDistributedEnvironment
from torch.distributed.tensor import DTensor, distribute_tensor

LAYOUT_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def export_layout() -> bool:
    """Put this process's rank, world, local rank, local world and rendezvous address into the environment (torch's
    env:// names); False when it is the only process. torchrun sets all six itself. A task of an srun that submitit
    did not start is a SLURM task all the same: submitit reads SLURM's variables once told the executor is slurm."""
    if all(key in os.environ for key in LAYOUT_VARIABLES):
        return int(os.environ["WORLD_SIZE"]) > 1
    if "SUBMITIT_EXECUTOR" not in os.environ and "SLURM_PROCID" in os.environ and "SLURM_STEP_ID" in os.environ:
        os.environ["SUBMITIT_EXECUTOR"] = "slurm"
    try:
        layout = TorchDistributedEnvironment()
    except RuntimeError:  # neither a submitit job nor a SLURM task
        return False
    if layout.world_size == 1:
        return False
    # a requeued or nested job may inherit another job's values: this job's own win
    layout.export(set_cuda_visible_devices=False, overwrite=True)
    return True


def init_distributed() -> DistInfo:
    if not export_layout():
        return DistInfo(device=torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    rank, world, local = (int(os.environ[key]) for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                rank=rank, world_size=world)
    return DistInfo(rank, world, device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, strategy: str, info: DistInfo) -> nn.Module:
    """DDP, or FSDP2 with parameters kept gathered between forward and backward (like the reference's SHARD_GRAD_OP).
    The returned module's forward is the model's; under DDP reach the model itself through `.module`."""
    if info.world_size == 1:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in [*model.patch_mixer, *model.blocks]:
            fully_shard(block, reshard_after_forward=False)
        return fully_shard(model, reshard_after_forward=False)
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    # buffers (pos_embed, mask_token) are computed identically on every rank: nothing to broadcast each forward
    return DenoiserDDP(model, device_ids=device_ids, broadcast_buffers=False)


class DenoiserDDP(nn.parallel.DistributedDataParallel):
    """DDP that still answers `.config`, which the EDM loss reads from the denoiser it is given."""

    @property
    def config(self):
        return self.module.config


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def reshard(model: nn.Module) -> None:
    """Back to sharded parameters after forwards without a backward (FSDP2 with reshard_after_forward=False keeps
    the gathered ones on the modules until a backward), as after a training step; no-op without FSDP."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool):
    """Skip the gradient all-reduce on all but the last microbatch of an accumulated step."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        with contextlib.nullcontext() if enabled else model.no_sync():
            yield
    else:
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
            model.set_requires_gradient_sync(enabled)
        yield


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)  # SUM then divide: gloo has no AVG
        value /= dist.get_world_size()
    return value


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor from a possibly sharded one (a collective under FSDP: call on every rank)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def shard_like(full: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`full` laid out like `reference` (this rank's shard when reference is a DTensor)."""
    full = full.to(reference.device, reference.dtype)
    if isinstance(reference, DTensor):
        return distribute_tensor(full, reference.device_mesh, reference.placements)
    return full
