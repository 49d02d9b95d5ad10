"""The training loop of one stage: build, initialise or resume, step, log, checkpoint, export.

    stats = Trainer(load_stage_config("config/stages/tiny/stage1.yaml"), init_distributed()).run()

A step = `accumulation` microbatches per rank (global batch / (micro batch x world size)), their gradients averaged,
clipped, one AdamW step, then the EMA. The noise of every microbatch is seeded from (seed, step, global microbatch
index), so a step's result does not depend on how many ranks share it or on where a run was resumed.
"""
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from microdit.checkpoint import encoder_metadata, save_dit
from microdit.diffusion.edm import EDMConfig, edm_loss
from microdit.errors import UserError
from microdit.files import atomic_write, read_jsonl, write_json
from microdit.models.dit import MicroDiT, create_dit
from microdit.models.speed import apply_speed_options
from microdit.progress import progress
from microdit.provenance import provenance
from microdit.train import state as ckpt
from microdit.train.config import InitConfig, StageConfig, save_stage_config, to_dict
from microdit.train.data import build_source, microbatch_index
from microdit.train.distributed import (
    DistInfo, barrier, full_tensor, gradient_sync, mean_across_ranks, wrap_model,
)
from microdit.train.ema import EMA
from microdit.train.metrics import MetricsLog, Throughput, memory_gib, peak_flops, train_flops_per_sample
from microdit.train.optim import apply_gradients, build_optimizer, set_lr
from microdit.train.schedules import lr_factor
from microdit.train.validation import HeldOutLoss


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class StepContext:
    """What a callback sees after each optimizer step (on every rank; callbacks decide who does the work). `loss`
    stays on the device: reading it (float()) makes the host wait for the step to finish."""
    step: int
    end_step: int
    loss: torch.Tensor
    trainer: "Trainer"


def build_model(cfg: StageConfig) -> MicroDiT:
    m = cfg.model
    return create_dit(m.arch, input_size=m.latent_res, in_channels=m.in_channels, caption_channels=m.caption_channels,
                      pos_interp_scale=m.pos_interp_scale, **m.overrides)


def noise_seed(seed: int, step: int, microbatch: int) -> int:
    return ((seed * 1_000_003 + step) * 65_537 + microbatch) % 2 ** 63


def denoising_loss(model: nn.Module, batch: dict, edm: EDMConfig, mask_ratio: float) -> torch.Tensor:
    """EDM loss of one microbatch; a dropped caption becomes the all-zero (null) embedding."""
    keep = batch["drop_caption_mask"].reshape(-1, 1, 1, 1)
    return edm_loss(model, batch["latents"].float(), batch["caption_latents"].float() * keep, edm, mask_ratio)


def autocast(cfg: StageConfig, device_type: str):
    """bf16 autocast over fp32 master weights, or none (precision fp32)."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def example_batch(cfg: StageConfig, device: torch.device, size: int = 1) -> dict:
    m = cfg.model
    return {"latents": torch.randn(size, *m.latent_shape, device=device),
            "caption_latents": torch.randn(size, 1, cfg.data.caption_len, m.caption_channels, device=device),
            "drop_caption_mask": torch.ones(size, device=device)}


class Trainer:
    def __init__(self, cfg: StageConfig, info: DistInfo, resume: str = "auto", callbacks=()):
        self.cfg, self.info, self.callbacks = cfg, info, list(callbacks)
        self.out_dir = Path(cfg.out_dir)
        self.accumulation = cfg.accumulation(info.world_size)
        self.edm = EDMConfig(p_mean=cfg.model.p_mean, p_std=cfg.model.p_std)
        if info.is_main:
            ckpt.prepare_run_folder(self.out_dir, to_dict(cfg), resume)
        barrier()
        resume_from = ckpt.newest_checkpoint(self.out_dir) if resume == "auto" else None
        init = None if resume_from else cfg.init  # a stage's own checkpoint outranks the stage it starts from
        self._build(init)
        self._restore(resume_from, init)
        self.end_step = self.stage_start + cfg.steps
        self.log = MetricsLog(ckpt.metrics_log_path(self.out_dir), info.is_main, first_step=self.step)

    def _build(self, init: InitConfig | None) -> None:
        """The model (compiled, with init mode weights' weights), its optimizer, its data and the held-out loss."""
        cfg, info = self.cfg, self.info
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        # the model itself; `self.model` is what trains (DDP around it, or the same object sharded in place by FSDP)
        self.raw = build_model(cfg).to(info.device)
        self.flops_per_sample = self._measure_flops()
        if init is not None and init.mode == "weights":
            ckpt.load_weights(self.raw, ckpt.resolve_init(init.from_, "weights"))
        if cfg.compile != "none":
            # a restart (a requeue may land on another node) reuses the compiled graphs instead of compiling again
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str((self.out_dir / "compile_cache").resolve()))
        apply_speed_options(self.raw, cfg.speed_options())  # compiles in place: names stay free of `_orig_mod.`
        self.model = wrap_model(self.raw, cfg.strategy, info)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.source = build_source(cfg, info.rank, info.world_size, self.accumulation)
        self.heldout = (HeldOutLoss(cfg, self.edm, info.rank, info.world_size, info.device)
                        if cfg.validation.every else None)

    def _restore(self, resume_from: Path | None, init: InitConfig | None) -> None:
        """The clock, weights, optimizer, data position and EMA of this stage's newest checkpoint that reads back, or
        of the full state init mode full starts from; a fresh start keeps what _build made."""
        self.step = self.stage_start = 0
        self.wall_time_before = 0.0
        self.last_checkpoint: Path | None = None
        full_state = source = None
        if resume_from is not None:  # a newest checkpoint that does not read back falls back to an older one
            source, full_state = ckpt.read_newest_valid(self.out_dir, self.info.is_main)
            self.last_checkpoint = source
        elif init is not None and init.mode == "full":
            source = ckpt.resolve_init(init.from_, "full")
            full_state = ckpt.read_full_state(source)
        if source is not None:
            ckpt.check_state_fits(full_state, self.model, source)
            self._load_full_state(full_state, same_stage=resume_from is not None, source=source)
        with torch.no_grad():
            self.raw.reset_pos_embed()  # a function of this stage's resolution, never taken from another stage
        self.ema = EMA(self.raw, self.cfg.ema) if self.cfg.ema is not None else None
        if self.ema is not None and full_state is not None and full_state.get("ema"):
            self.ema.load_state_dict(full_state["ema"])

    def _measure_flops(self) -> float | None:
        batch = example_batch(self.cfg, self.info.device)
        flops = train_flops_per_sample(lambda b: denoising_loss(self.raw, b, self.edm, self.cfg.model.train_mask_ratio),
                                       batch)
        self.raw.zero_grad(set_to_none=True)
        return flops

    def _load_full_state(self, state: dict, same_stage: bool, source: Path) -> None:
        continue_data = not same_stage and ckpt.reads_same_stream(state, to_dict(self.cfg))
        ckpt.load_full_state(state, self.model, self.optimizer, self.source, self.info, same_stage, continue_data)
        self.step = int(state["step"])
        # resuming this stage keeps its start; continuing another stage's state starts this stage at its step
        self.stage_start = int(state["stage_start"]) if same_stage else self.step
        self.wall_time_before = float(state.get("wall_time", 0.0)) if same_stage else 0.0
        if same_stage and self.info.is_main:
            print(f"{self.cfg.name}: resumes {source} at step {self.step}", file=sys.stderr, flush=True)
        elif self.info.is_main:
            how = ("continues its data stream where it stopped" if continue_data else
                   "starts a new pass over its data (datasets, seed or global batch differ from that stage's)")
            print(f"{self.cfg.name}: continues {source} at step {self.step}; {how}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------------------------- loop
    def run(self) -> dict:
        """Train to the end of the stage and export; a stage already finished just returns its stats."""
        cfg, info = self.cfg, self.info
        stats_path = self.out_dir / "train_stats.json"
        if self.step >= self.end_step and all(path.exists() for path in self.export_paths()):
            return json.loads(stats_path.read_text())
        throughput = Throughput(self.flops_per_sample, peak_flops(info.device), info.world_size)
        batches = iter(self.source)
        progress = self._progress_bar()
        window, logged_loss = [], math.nan
        self.model.train()
        first_step_s = None
        while self.step < self.end_step:
            lr = cfg.optim.lr * lr_factor(cfg.schedule, self.step, self.end_step)
            started = time.perf_counter()
            loss, grad_norm = self._train_step(batches, lr)
            self.step += 1
            window.append((self.step, loss, grad_norm))
            if first_step_s is None:  # what this (re)start paid before full speed: compilation, allocator warm-up
                self._read_losses(window)  # waits for the device, so the time is the step's, not its launch's
                first_step_s = time.perf_counter() - started
                if info.is_main:
                    print(f"{cfg.name}: first step took {first_step_s:.1f} s", file=sys.stderr, flush=True)
            throughput.add(cfg.global_batch)
            if self.ema is not None:
                self.ema.update(self.raw, self.step)
            validate_now = self.heldout is not None and (self.step % cfg.validation.every == 0
                                                          or self.step == self.end_step)
            log_now = self.step % cfg.log_every == 0 or self.step == self.end_step or validate_now
            save_now = self.step % cfg.save_every == 0 or self.step == self.end_step
            if log_now or save_now:  # never a checkpoint of weights that a non-finite loss already reached
                losses = self._read_losses(window)
            if log_now:
                logged_loss = sum(losses) / len(losses)
                heldout = self._heldout_loss(throughput) if validate_now else {}
                self.log.write({"step": self.step, "loss": logged_loss, "lr": lr,
                                "grad_norm": float(grad_norm), **throughput.report(),
                                "memory_gib": memory_gib(info.device), **heldout})
                window = []
            if progress is not None:
                progress.update(1)
                if log_now:  # shown at the next redraw: in a log, a line every N seconds, not every log step
                    progress.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}", refresh=False)
            if save_now:
                self.save_checkpoint(throughput.elapsed())
            for callback in self.callbacks:
                callback(StepContext(self.step, self.end_step, loss, self))
        if progress is not None:
            progress.close()
        self.log.close()
        return self._finish(throughput, logged_loss, first_step_s)

    def _heldout_loss(self, throughput: Throughput) -> dict:
        """{"val_loss": ...} of the current weights, and "val_loss_ema" of their average when the stage keeps one;
        its time is left out of the logged img/s (the steps before it have finished: their losses were just read)."""
        started = time.perf_counter()
        values = {"val_loss": self.heldout(self.model, self.autocast)}
        if self.ema is not None:
            with self.ema.swapped_in(self.raw):
                values["val_loss_ema"] = self.heldout(self.model, self.autocast)
        throughput.exclude(time.perf_counter() - started)
        return values

    def _train_step(self, batches, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; its mean loss and gradient norm stay on the device, so that the host does not wait
        for the step and queues the next one behind it (both are read at log and checkpoint steps)."""
        set_lr(self.optimizer, lr)
        losses = []
        for k in range(self.accumulation):
            batch = {key: value.to(self.info.device, non_blocking=True) for key, value in next(batches).items()}
            microbatch = microbatch_index(k, self.info.rank, self.info.world_size)
            torch.manual_seed(noise_seed(self.cfg.seed, self.step, microbatch))
            with gradient_sync(self.model, enabled=k == self.accumulation - 1), self.autocast():
                micro_loss = denoising_loss(self.model, batch, self.edm, self.cfg.model.train_mask_ratio)
                (micro_loss / self.accumulation).backward()
            losses.append(micro_loss.detach().float())
        loss = mean_across_ranks(torch.stack(losses).mean())
        return loss, full_tensor(apply_gradients(self.model, self.optimizer, self.cfg.optim.grad_clip))

    def _read_losses(self, window: list[tuple[int, torch.Tensor, torch.Tensor]]) -> list[float]:
        """The losses of (step, loss, gradient norm) triples as numbers, waiting for their steps. A non-finite loss
        or gradient norm (whose clipped update has made the weights non-finite) stops the stage with the first such
        step and the last good checkpoint (none is saved after it: saving reads them first)."""
        values = torch.stack([torch.stack((loss, norm.float())) for _, loss, norm in window]).tolist()
        for (step, _, _), (loss, norm) in zip(window, values):
            for name, value in (("loss", loss), ("gradient norm", norm)):
                if not math.isfinite(value):
                    where = self.last_checkpoint or "none saved yet"
                    raise TrainingDiverged(f"{name} is {value} at step {step}; last good checkpoint: {where}")
        return [loss for loss, _ in values]

    def autocast(self):
        return autocast(self.cfg, self.info.device.type)

    def _progress_bar(self):
        if not (self.cfg.progress and self.info.is_main):
            return None
        return progress(total=self.end_step - self.stage_start, initial=self.step - self.stage_start,
                        desc=self.cfg.name, unit="step")

    def _logged_final_loss(self) -> float | None:
        """The loss logged at the last step (the metrics log has it before the last checkpoint is written)."""
        path = ckpt.metrics_log_path(self.out_dir)
        lines = read_jsonl(path, "metrics log") if path.exists() else []
        return next((line["loss"] for line in reversed(lines) if line.get("step") == self.step and "loss" in line),
                    None)

    # ------------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, elapsed: float) -> None:
        path = ckpt.checkpoint_path(self.out_dir, self.step)
        clock = {"step": self.step, "stage_start": self.stage_start, "stage": self.cfg.name,
                 "wall_time": self.wall_time_before + elapsed, "config": to_dict(self.cfg)}
        ckpt.save_full_state(path, self.model, self.optimizer, self.ema, self.source, clock, self.info,
                             self.cfg.keep_checkpoints)
        barrier()
        self.last_checkpoint = path

    def export_model(self, use_ema: bool = False) -> MicroDiT | None:
        """A plain CPU copy of the denoiser (its EMA weights if asked) on rank 0, None elsewhere. Collective."""
        weights = get_model_state_dict(self.raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        ema = self.ema.state_dict() if use_ema and self.ema is not None else {}
        if not self.info.is_main:
            return None
        copy = build_model(self.cfg)
        copy.load_state_dict({**weights, **ema})
        return copy.eval()

    def export_paths(self) -> list[Path]:
        """What a finished stage exports (a missing one is exported again from the last checkpoint, untrained)."""
        names = ["train_stats.json", "final.safetensors", "stage.yaml", ckpt.METRICS]
        return [self.out_dir / name for name in names + (["ema.safetensors"] if self.ema is not None else [])]

    def _finish(self, throughput: Throughput, loss: float, first_step_s: float | None) -> dict:
        raw = self.export_model()
        ema = self.export_model(use_ema=True) if self.ema is not None else None
        images_seen = (self.end_step - self.stage_start) * self.cfg.global_batch
        wall_time = self.wall_time_before + throughput.elapsed()
        rate = throughput.mean_rate()
        if first_step_s is None:  # requeued after the last checkpoint: no step ran in this attempt
            loss, rate = self._logged_final_loss(), images_seen / wall_time
        stats = {"stage": self.cfg.name, "steps": self.end_step - self.stage_start, "global_step": self.step,
                 "images_seen": images_seen, "wall_time_s": wall_time,
                 "gpu_count": self.info.world_size if self.info.device.type == "cuda" else 0,
                 "world_size": self.info.world_size, "mean_img_per_s": rate,
                 "mfu": throughput.mfu(rate), "final_loss": loss,
                 "flops_per_image": self.flops_per_sample, "first_step_s": first_step_s, "provenance": provenance()}
        if self.info.is_main:
            extra = {"step": self.step, **encoder_metadata(self.cfg.data.vae, self.cfg.data.text_encoder)}
            save_dit(raw, self.out_dir / "final.safetensors", self.cfg.model.arch, kind="raw", extra=extra)
            if ema is not None:
                save_dit(ema, self.out_dir / "ema.safetensors", self.cfg.model.arch, kind="ema", extra=extra)
            write_json(stats, self.out_dir / "train_stats.json")
            log = ckpt.metrics_log_path(self.out_dir)
            atomic_write(self.out_dir / ckpt.METRICS, lambda tmp: shutil.copyfile(log, tmp))
            save_stage_config(self.cfg, self.out_dir / "stage.yaml")  # the settings these exports were made with
        barrier()
        return stats
