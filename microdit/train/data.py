"""Where training batches come from: a seeded synthetic source, or the MDS loader.

A source yields this rank's microbatches in order, {"latents" (B,C,H,W), "caption_latents" (B,1,L,W),
"drop_caption_mask" (B,)}, and can save / restore its position so a resumed run continues mid-epoch.
"""
from typing import Iterator

import torch

from microdit.errors import UserError
from microdit.train.config import StageConfig

_SEED_STRIDE = 0x9E3779B97F4A7C15  # odd 64-bit constant: consecutive sample ids map to well-spread generator seeds


def microbatch_index(k: int, rank: int, world_size: int) -> int:
    """Which microbatch of its step a rank's k-th is. mosaicml-streaming deals each global batch to the ranks in
    turn, sample by sample, so a rank holds every world-th sample of it and its k-th microbatch (every
    accumulation-th of those) is every (world x accumulation)-th: the samples of microbatch k * world + rank, the
    same ones whatever the world size. The trainer seeds a microbatch's noise by this index."""
    return k * world_size + rank


def sample_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator of sample `index` alone: what it draws does not depend on batching or ranks."""
    return torch.Generator().manual_seed((seed + index * _SEED_STRIDE) % 2 ** 63)


class RandomLatents:
    """Deterministic synthetic latents for smoke runs and tests.

    Sample i of the global stream depends only on (seed, i), and microbatch k of rank r at step s holds the samples of
    global microbatch s * world * accumulation + microbatch_index(k, r, world). So the global batch of a step is the
    same whatever the world size, and the position (steps consumed) is the whole resumable state.
    """

    def __init__(self, latent_shape: tuple, caption_shape: tuple, micro_batch: int, accumulation: int, rank: int,
                 world_size: int, seed: int, cap_drop_prob: float):
        self.latent_shape, self.caption_shape = tuple(latent_shape), tuple(caption_shape)
        self.micro_batch, self.accumulation = micro_batch, accumulation
        self.rank, self.world_size, self.seed, self.cap_drop_prob = rank, world_size, seed, cap_drop_prob
        self.step = 0

    def __iter__(self) -> Iterator[dict]:
        while True:
            first = self.step * self.world_size * self.accumulation
            batches = [self._microbatch(first + microbatch_index(k, self.rank, self.world_size))
                       for k in range(self.accumulation)]
            self.step += 1  # before yielding, so a checkpoint taken after the step records the next position
            yield from batches

    def _microbatch(self, index: int) -> dict:
        samples = [self._sample(index * self.micro_batch + b) for b in range(self.micro_batch)]
        return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}

    def _sample(self, i: int) -> dict:
        g = sample_generator(self.seed, i)
        return {"latents": torch.randn(self.latent_shape, generator=g),
                "caption_latents": torch.randn(self.caption_shape, generator=g),
                "drop_caption_mask": (torch.rand((), generator=g) >= self.cap_drop_prob).float()}

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def build_source(cfg: StageConfig, rank: int, world_size: int, accumulation: int) -> "RandomLatents | RenamedLatents":
    m, d = cfg.model, cfg.data
    if d.kind == "random":
        return RandomLatents(m.latent_shape, (1, d.caption_len, m.caption_channels),
                             cfg.micro_batch, accumulation, rank, world_size, cfg.seed, d.cap_drop_prob)
    return build_mds_source(cfg, accumulation)


def build_mds_source(cfg: StageConfig, accumulation: int) -> "RenamedLatents":
    """The streaming MDS latents loader (microdit/data/loader.py), imported only when a stage asks for it.
    `data.options` go to its build_latents_loader (datadirs, resolution, proportions, num_workers, ...); rank and
    world size reach mosaicml-streaming through the environment (microdit.train.distributed exports them).

    The loader's batch is this rank's share of a step (micro batch x accumulation), cut into microbatches here, as
    the reference's loader gave Composer the device batch to split: streaming orders samples by its batch size, so
    the order, and a saved position, follow the global batch and the world size, not the microbatch (a memory knob
    that differs between stages which continue each other's stream). Microbatch k takes every accumulation-th sample
    from the k-th (microbatch_index)."""
    from microdit.data.loader import build_latents_loader

    try:
        batches = build_latents_loader(batch_size=cfg.micro_batch * accumulation,
                                       cap_drop_prob=cfg.data.cap_drop_prob, seed=cfg.seed, **cfg.data.options)
    except TypeError as err:
        raise UserError(f"data.options: {err}") from None
    return RenamedLatents(batches, accumulation, cfg.model.latent_shape, cfg.data.options.get("resolution"))


class RenamedLatents:
    """Endless microbatches from the MDS loader's per-rank batches, epoch after epoch (a stage is measured in steps,
    not epochs). The loader names image latents `image_latents` (as the reference does); the trainer reads
    `latents`. The first batch's latents are checked against the model's input (`latent_shape`), so that a wrong
    `model.latent_res` (in the workflow, a wrong `vae.downsample`) is one line naming the setting, not a shape error
    deep in the first step."""

    def __init__(self, loader, accumulation: int, latent_shape: tuple | None = None, resolution: int | None = None):
        self.loader, self.accumulation = loader, accumulation
        self.latent_shape, self.resolution = latent_shape, resolution

    def check_latents(self, latents: torch.Tensor) -> None:
        have = tuple(latents.shape[1:])
        if self.latent_shape is None or have == tuple(self.latent_shape):
            return
        at, hint = (f" at {self.resolution} px" if self.resolution else ""), ""
        square = len(have) == 3 and have[1] == have[2]
        if square and have[0] == self.latent_shape[0] and self.resolution and self.resolution % have[1] == 0:
            factor = self.resolution // have[1]
            hint = (f"; these latents are {factor}x smaller than the images: set model.latent_res to {have[1]} (in "
                    f"the workflow config: vae.downsample: {factor})")
        raise UserError(f"model.in_channels / model.latent_res: the model takes {tuple(self.latent_shape)} per image, "
                        f"but the latents in data.options.datadirs are {have}{at}{hint}")

    def __iter__(self) -> Iterator[dict]:
        empty_passes, checked = 0, False
        while True:
            empty = True
            for batch in self.loader:  # each pass is the next epoch; streaming reshuffles and tracks the position
                if not checked:
                    self.check_latents(batch["image_latents"])
                    checked = True
                empty = False
                for k in range(self.accumulation):
                    yield {"latents" if key == "image_latents" else key: value[k::self.accumulation]
                           for key, value in batch.items()}
            # a position restored at the end of an epoch leaves that epoch's pass empty; two empty passes in a row
            # mean there is nothing to read
            empty_passes = empty_passes + 1 if empty else 0
            if empty_passes == 2:
                raise UserError("data: the datasets hold fewer samples than one global batch "
                                "(micro_batch x accumulation x ranks); nothing to train on")

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
