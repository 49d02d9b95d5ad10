"""Process-group setup and model wrapping: one process per GPU (or per CPU task), NCCL on GPU, gloo on CPU.

Rank and world size come from submitit's JobEnvironment inside a submitit job (its `local` cluster sets no RANK /
WORLD_SIZE), else from torchrun-style environment variables, else this is a single process with no process group.
"""
import contextlib
import os
import random
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.tensor import DTensor, distribute_tensor

PORT_RANGE = (20000, 60000)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _submitit_env() -> dict | None:
    import submitit

    try:
        env = submitit.JobEnvironment()
        rank, world, local = env.global_rank, env.num_tasks, env.local_rank
        master, job_id = env.hostnames[0], env.job_id
    except RuntimeError:  # not inside a submitit job
        return None
    # the job id, shared by all tasks, picks the port, so every task agrees without talking first
    port = os.environ.get("MASTER_PORT") or random.Random(job_id).randint(*PORT_RANGE)
    return {"rank": rank, "world": world, "local": local, "addr": master, "port": str(port)}


def _env_vars() -> dict | None:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return {"rank": int(os.environ["RANK"]), "world": int(os.environ["WORLD_SIZE"]),
            "local": int(os.environ.get("LOCAL_RANK", 0)), "addr": os.environ.get("MASTER_ADDR", "127.0.0.1"),
            "port": os.environ.get("MASTER_PORT", "29500")}


def init_distributed() -> DistInfo:
    found = _submitit_env() or _env_vars()
    if found is None or found["world"] == 1:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        return DistInfo(device=device)
    if torch.cuda.is_available():
        device = torch.device("cuda", found["local"] % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    # libraries that read the environment (mosaicml-streaming) see the same layout as torch.distributed
    for key, value in {"RANK": found["rank"], "WORLD_SIZE": found["world"], "LOCAL_RANK": found["local"],
                       "MASTER_ADDR": found["addr"], "MASTER_PORT": found["port"]}.items():
        os.environ.setdefault(key, str(value))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method=f"tcp://{found['addr']}:{found['port']}",
                                rank=found["rank"], world_size=found["world"])
    return DistInfo(found["rank"], found["world"], found["local"], device)


def device_peers(info: DistInfo) -> tuple[int, int]:
    """(this rank's place, count) among the ranks whose device is this rank's, index included: on CPUs all of
    them, on GPUs the ranks of the same local index on each node (what can share compiled graphs)."""
    if not info.enabled:
        return 0, 1
    devices = [None] * info.world_size
    dist.all_gather_object(devices, str(info.device))
    same = [rank for rank, device in enumerate(devices) if device == str(info.device)]
    return same.index(info.rank), len(same)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, strategy: str, info: DistInfo) -> nn.Module:
    """DDP, or FSDP2 with parameters kept gathered between forward and backward (like the reference's SHARD_GRAD_OP).
    The returned module's forward is the model's; under DDP reach the model itself through `.module`."""
    if not info.enabled:
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
