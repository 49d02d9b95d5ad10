"""Training batches from precomputed latents (SPEC §4.4, docs/data.md): one StreamingDataset over several latents
datasets, which streaming shards over ranks and workers and resumes mid-epoch.

Each sample: image_latents (C, h, w), caption_latents (1, L, W), both float16 as stored, and drop_caption_mask (0.0 =
caption dropped for classifier-free guidance), drawn from (seed, epoch, sample id): a resumed run drops the same ones.
"""
import glob
import logging
import os
import re
from typing import Sequence

import numpy as np
import torch
from streaming import Stream, StreamingDataLoader, StreamingDataset
from streaming.base.util import clean_stale_shared_memory as streaming_clean_stale_shared_memory

from microdit.data.mds import missing_columns
from microdit.errors import UserError

log = logging.getLogger(__name__)

STREAMING_SHM = re.compile(r"/dev/shm/\d{6}_\w+")


def shared_memory_in_use() -> bool:
    """Whether a live process (of ours: others' /proc entries are unreadable) maps a streaming shared-memory block."""
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps) as f:
                if STREAMING_SHM.search(f.read()):
                    return True
        except OSError:  # the process exited meanwhile, or is not ours
            continue
    return False


def clean_stale_shared_memory() -> bool:
    """Remove the blocks a killed run left in /dev/shm (they make the next StreamingDataset fail or hang).
    streaming's cleaner unlinks every block it finds, even a live job's, so it only runs when none is in use, on
    any rank: the cleaner ends in a barrier, so every rank must take the same branch (nodes see other jobs)."""
    in_use = shared_memory_in_use()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        seen = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(seen, in_use)
        in_use = any(seen)
    if in_use:
        log.info("streaming shared memory in use by a live process: stale-memory cleanup skipped")
        return False
    streaming_clean_stale_shared_memory()
    return True


class LatentsDataset(StreamingDataset):
    def __init__(self, datadirs: Sequence[str], resolution: int, cap_drop_prob: float = 0.0,
                 proportions: Sequence[float] | None = None, batch_size: int | None = None, shuffle: bool = True,
                 seed: int = 9176, **streaming_kwargs):
        if not 0.0 <= cap_drop_prob <= 1.0:
            raise ValueError(f"cap_drop_prob {cap_drop_prob}: expected a probability in [0, 1]")
        if proportions is not None and len(proportions) != len(datadirs):
            raise ValueError(f"{len(proportions)} proportions for {len(datadirs)} datasets")
        for datadir in datadirs:  # named here, rather than as a streaming RuntimeError or a worker's KeyError
            missing, columns = missing_columns(datadir, [f"latents_{resolution}", "caption_latents"])
            if missing:
                raise UserError(f"{datadir}: no latents_{resolution} or caption_latents column (its columns: "
                                f"{', '.join(columns)}); expected precompute's latents at {resolution} px")
        streams = [Stream(local=os.fspath(d), proportion=None if proportions is None else proportions[i])
                   for i, d in enumerate(datadirs)]
        super().__init__(streams=streams, batch_size=batch_size, shuffle=shuffle, shuffle_seed=seed,
                         **streaming_kwargs)
        self.column = f"latents_{resolution}"
        self.cap_drop_prob = cap_drop_prob
        self.seed = seed

    def drop_mask(self, sample_id: int) -> float:
        draw = np.random.default_rng([self.seed, self.next_epoch, sample_id]).random()
        return 0.0 if draw < self.cap_drop_prob else 1.0

    def get_item(self, sample_id: int, retry: int = 7) -> dict:
        sample = super().get_item(sample_id, retry)  # its columns were checked on every shard's index
        # decoded arrays are read-only views of the shard: copy before handing them to torch. They stay in their
        # stored dtype (float16): half the bytes through workers, collation and pinning; the trainer converts on
        # the device, where it costs nothing (docs/benchmarks.md, `bench loader`)
        return {"image_latents": torch.from_numpy(np.array(sample[self.column])),
                "caption_latents": torch.from_numpy(np.array(sample["caption_latents"])),
                "drop_caption_mask": torch.tensor(self.drop_mask(sample_id), dtype=torch.float32)}


def build_latents_loader(datadirs: Sequence[str], resolution: int, batch_size: int, cap_drop_prob: float = 0.0,
                         proportions: Sequence[float] | None = None, shuffle: bool = True, seed: int = 9176,
                         num_workers: int = 2, drop_last: bool = True, clean_shared_memory: bool = True,
                         pin_memory: bool | None = None, **streaming_kwargs) -> StreamingDataLoader:
    """A StreamingDataLoader of per-rank batches; state_dict()/load_state_dict() resume mid-epoch. Batches are
    pinned when a GPU is present (pin_memory=None), so the trainer's non-blocking copy overlaps the step."""
    if clean_shared_memory:
        clean_stale_shared_memory()
    dataset = LatentsDataset(datadirs, resolution, cap_drop_prob, proportions, batch_size, shuffle, seed,
                             **streaming_kwargs)
    return StreamingDataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                               drop_last=drop_last, persistent_workers=num_workers > 0,
                               prefetch_factor=2 if num_workers > 0 else None,
                               pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory)
