"""Data-loader throughput: can the MDS latents loader feed a GPU at the training speed measured on it?

Times batches through the trainer's own loader (streaming workers, collate, pinned memory when a GPU is present)
over a directory of MDS shards, or over synthetic shards with the paper's sample layout written for the purpose:
SDXL latents (4 x r/8 x r/8) and DFN5B caption latents (1 x 77 x 1024), float16, about 166 KB a sample at 256 px,
so the bytes moved per image are the real ones. Compare img/s with `bench train` at the same stage.
"""
import time
from pathlib import Path

import numpy as np
import torch

from microdit.errors import UserError

PAPER_CAPTION_SHAPE = (1, 77, 1024)


def write_synthetic_shards(out: Path, samples: int, resolution: int, seed: int = 0) -> Path:
    """`samples` random paper-layout samples as uncompressed MDS shards in `out` (reused when already there; written
    whole or not at all, so an interrupted run leaves nothing that looks complete)."""
    from streaming import MDSWriter

    from microdit.data.mds import SIZE_LIMIT
    from microdit.files import atomic_folder

    out = Path(out)
    if (out / "index.json").exists():
        return out
    side = resolution // 8
    columns = {"caption": "str", "caption_latents": "ndarray:float16:" + ",".join(map(str, PAPER_CAPTION_SHAPE)),
               f"latents_{resolution}": f"ndarray:float16:4,{side},{side}"}
    rng = np.random.default_rng(seed)

    def write(staging: Path) -> None:
        with MDSWriter(out=str(staging), columns=columns, compression=None, size_limit=SIZE_LIMIT) as writer:
            for i in range(samples):
                writer.write({"caption": f"synthetic {i}",
                              "caption_latents": rng.standard_normal(PAPER_CAPTION_SHAPE).astype(np.float16),
                              f"latents_{resolution}": rng.standard_normal((4, side, side)).astype(np.float16)})

    atomic_folder(out, write)
    return out


def time_loader(datadir: Path, resolution: int, batch: int, workers: int, batches: int = 10, warmup: int = 2) -> dict:
    """img/s of `batches` batches after `warmup` (which also starts the workers), and the bytes per image."""
    from microdit.data.loader import build_latents_loader

    loader = build_latents_loader([str(datadir)], resolution, batch, cap_drop_prob=0.1, num_workers=workers,
                                  seed=0)
    batches_seen, images, nbytes = 0, 0, 0
    start = time.perf_counter() if warmup == 0 else None
    for item in loader:
        batches_seen += 1
        if batches_seen == warmup:
            start = time.perf_counter()
        elif batches_seen > warmup:
            images += item["caption_latents"].shape[0]
            nbytes += sum(v.numel() * v.element_size() for v in item.values())
            if batches_seen == warmup + batches:
                break
    if start is None or images == 0:
        raise UserError(f"{datadir}: fewer than {warmup + 1} batches of {batch}; write more samples (--samples)")
    seconds = time.perf_counter() - start
    return {"img_per_s": images / seconds, "batches": batches_seen - warmup, "batch_bytes_per_img": nbytes / images,
            "pinned": bool(item["caption_latents"].is_pinned()) if torch.cuda.is_available() else False}
