"""The held-out loss during training (SPEC §3.4): the unmasked EDM loss on a fixed set of held-out latents (COCO-2014
val in the paper run), every `validation.every` steps and at the stage's end, logged as `val_loss`.

Each sample keeps one noise level and one noise draw for the whole run (from its index and `validation.seed`), so
the curve moves with the weights only and does not depend on the batch size or the number of ranks; the reference
drew new ones at each evaluation. Noise levels follow the stage's (P_mean, P_std), so values compare along a stage
and between stages of one distribution (1-2 and 3-4), as the reference's did. Captions are never dropped.
"""
from typing import Callable

import numpy as np
import torch

from microdit.diffusion.edm import EDMConfig, denoising_error
from microdit.errors import UserError
from microdit.train.config import StageConfig
from microdit.train.data import sample_generator
from microdit.train.distributed import mean_across_ranks, reshard


def read_heldout(datadirs: list[str], resolution: int, num: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(latents, caption latents) of the first `num` samples of the directories, in order."""
    from microdit.data.mds import INDEX, iter_samples, missing_columns, shard_readers

    column = f"latents_{resolution}"
    samples = []
    for datadir in datadirs:
        missing, columns = missing_columns(datadir, [column, "caption_latents"])
        if missing:
            raise UserError(f"validation.datadirs: {datadir}/{INDEX} has no {column} or caption_latents column "
                            f"(its columns: {', '.join(columns)}); expected precompute's latents at {resolution} px")
        for reader in shard_readers(datadir):
            for sample in iter_samples(reader):
                samples.append((sample[column], sample["caption_latents"]))
                if len(samples) == num:
                    return samples
    return samples


def fixed_draw(seed: int, index: int, edm: EDMConfig, shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `index`'s noise level sigma = exp(P_mean + P_std n) and its noise, the same at every evaluation."""
    g = sample_generator(seed, index)
    sigma = (edm.p_mean + edm.p_std * torch.randn((), generator=g)).exp()
    return sigma, torch.randn(shape, generator=g)


class HeldOutLoss:
    """This rank's share of the held-out samples with their fixed draws, batched on the host; calling it scores the
    model on all ranks together (a collective: every rank calls it at the same steps)."""

    def __init__(self, cfg: StageConfig, edm: EDMConfig, rank: int, world_size: int, device: torch.device):
        v, m = cfg.validation, cfg.model
        resolution = v.resolution or cfg.data.options["resolution"]
        caption_shape = (1, cfg.data.caption_len, m.caption_channels)
        samples = read_heldout(v.datadirs, resolution, v.num)
        if samples and (samples[0][0].shape != m.latent_shape
                        or samples[0][1].shape != caption_shape):
            raise UserError(f"validation.datadirs: held-out latents {samples[0][0].shape} with captions "
                            f"{samples[0][1].shape} at {resolution} px, but this stage's model takes "
                            f"{m.latent_shape} with {caption_shape}")
        used = len(samples) // world_size * world_size  # equal shares: every rank runs as many forwards
        if used == 0:
            raise UserError(f"validation: {len(samples)} held-out samples (num {v.num}), fewer than the {world_size} "
                            f"ranks; expected at least one per rank")
        mine = list(range(rank, used, world_size))
        self.count, self.share, self.device, self.sigma_data = used, len(mine), device, edm.sigma_data
        self.batches = []
        for start in range(0, len(mine), v.batch_size):
            indices = mine[start:start + v.batch_size]
            draws = [fixed_draw(v.seed, i, edm, samples[i][0].shape) for i in indices]
            self.batches.append({
                "latents": torch.from_numpy(np.stack([samples[i][0] for i in indices])),
                "caption_latents": torch.from_numpy(np.stack([samples[i][1] for i in indices])),
                "sigma": torch.stack([sigma for sigma, _ in draws]).reshape(-1, 1, 1, 1),
                "noise": torch.stack([noise for _, noise in draws])})

    def __call__(self, model: torch.nn.Module, autocast: Callable) -> float:
        was_training = model.training
        model.eval()
        total = torch.zeros((), device=self.device)
        # compiled blocks run eagerly here: a few seconds of eager forwards cost less than compiling every block
        # again for this batch shape and grad mode (and those graphs would count against the recompile limit)
        with torch.no_grad(), autocast(), torch.compiler.set_stance("force_eager"):
            for batch in self.batches:
                b = {key: value.to(self.device).float() for key, value in batch.items()}
                loss, _ = denoising_error(model, b["latents"], b["caption_latents"], b["sigma"], b["noise"],
                                          self.sigma_data)
                total += loss.mean(dim=(1, 2, 3)).sum()
        reshard(model)  # the parameters sharded again, as the EMA swap and the next step expect
        model.train(was_training)
        return float(mean_across_ranks(total / self.share))
