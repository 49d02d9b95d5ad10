"""Full training state on disk: model, optimizer, EMA, clock, schedule, RNG of every rank, data position.

One file per save, `<out>/checkpoints/step_<N>.pt`, written by rank 0 through a temporary file and a rename, newest K
kept. Files are read back with torch.load(weights_only=True), so they hold only tensors and plain containers.
"""
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from microdit.checkpoint import (
    RECOMPUTABLE_BUFFERS, CheckpointError, load_dit_state, read_checkpoint, shape_problems,
)
from microdit.errors import UserError
from microdit.files import SETTINGS_MARKER, atomic_write, claim_folder, fingerprint, move_aside
from microdit.provenance import provenance
from microdit.train.cosmetic import weight_settings
from microdit.train.distributed import DistInfo, gather_objects, unwrap

CHECKPOINT_DIR = "checkpoints"
FINGERPRINT = "config.sha256"
_NAME = re.compile(r"^step_(\d+)\.pt$")


# --------------------------------------------------------------------------------------------------- files
def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / f"step_{step:09d}.pt"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Full-state checkpoints of a stage directory, oldest first."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    found = [(int(m.group(1)), p) for p in folder.glob("step_*.pt") if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def newest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def prune_checkpoints(out_dir: str | Path, keep: int) -> None:
    for old in list_checkpoints(out_dir)[:-keep]:
        old.unlink(missing_ok=True)


def run_fingerprint(settings: dict) -> str:
    """sha256 of what decides the trained weights: the stage's settings (a stage config as a dict, cosmetic keys
    dropped), the run it starts from and what its data were made from. Checkpoints are resumed only under the same
    fingerprint, so retraining an earlier stage or recomputing the latents retrains this stage rather than
    re-exporting its old weights."""
    return fingerprint({"settings": weight_settings(settings),
                        "starts_from": start_identity(settings.get("init")), "data": data_identity(settings["data"])})


def start_identity(init: dict | None):
    """A previous stage by its own run fingerprint (which chains through the stages before it); a checkpoint file
    named directly by its size and modification time (hashing gigabytes at every start would cost minutes)."""
    if not init or not init.get("from"):
        return None
    path = Path(init["from"])
    if (path / CHECKPOINT_DIR / FINGERPRINT).is_file():
        return (path / CHECKPOINT_DIR / FINGERPRINT).read_text().strip()
    if path.is_file():
        return [path.stat().st_size, path.stat().st_mtime_ns]
    return None  # missing: the stage stops on it with a clear error before any step


def data_identity(data: dict) -> list | None:
    """Each MDS dataset by its index and the settings marker precompute leaves in it (the VAE, text encoder, options
    and input it was encoded with). Not by file times: copying the data elsewhere must not restart a stage."""
    if data.get("kind") != "mds":
        return None
    identity = []
    for folder in map(Path, data.get("options", {}).get("datadirs", [])):
        marker, index = folder / SETTINGS_MARKER, folder / "index.json"
        identity.append([marker.read_text().strip() if marker.is_file() else None,
                         fingerprint(index.read_text()) if index.is_file() else None])
    return identity


# The metrics log of a stage's attempts lives with the checkpoints it describes: Snakemake removes a job's declared
# outputs before it reruns it, and a resumed stage appends to the log. `metrics.jsonl` beside it is its export.
METRICS = "metrics.jsonl"

# what a stage's run writes beside its checkpoints; set aside with them, so that a new run's log and grids are its own
RUN_OUTPUTS = (METRICS, "train_stats.json", "final.safetensors", "ema.safetensors", "stage.yaml", "samples")


def metrics_log_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / METRICS


def prepare_run_folder(out_dir: Path, settings: dict, resume: str) -> None:
    """Rank 0, before a stage builds: clear what a killed save left, and move aside (never delete) the checkpoints,
    log and exports of a run that this one must not resume: another config (settings), or `resume` other than auto."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    # atomic_write's temporary files of a killed save (a kill -9 or a lost node leaves one as big as a checkpoint):
    # no live writer owns them now, since one job at a time drives a stage folder and in it rank 0 alone saves
    if removed := sorted(folder.glob(".step_*.pt.*.tmp")):
        for path in removed:
            path.unlink(missing_ok=True)
        print(f"{out_dir}: removed {len(removed)} half-written checkpoint file(s) of a save that was killed, "
              f"e.g. {removed[0].name}", file=sys.stderr, flush=True)
    stale = claim_folder(folder, run_fingerprint(settings), FINGERPRINT)
    if stale is not None:
        print(f"{out_dir}: the config, the stage it starts from or its data changed since its checkpoints were "
              f"written; they were moved to {stale} with that run's log and exports, and the stage starts afresh",
              file=sys.stderr, flush=True)
    elif resume != "auto" and list_checkpoints(out_dir):
        # aside, so that pruning does not weigh the new run's checkpoints against them and a requeue resumes the
        # new run, not the old one
        stale = move_aside(folder)
        folder.mkdir()
        (stale / FINGERPRINT).replace(folder / FINGERPRINT)  # the config is the same: the marker stays
        print(f"{out_dir}: starting afresh (resume {resume!r}); its checkpoints, log and exports were moved to {stale}",
              file=sys.stderr, flush=True)
    if stale is None:
        return
    for name in RUN_OUTPUTS:
        path = Path(out_dir) / name
        if name == METRICS and (stale / name).exists():
            path.unlink(missing_ok=True)  # the export of the log that moved aside with the checkpoints
        elif path.exists():
            path.rename(stale / name)


# ----------------------------------------------------------------------------------------------------- RNG
def capture_rng() -> dict:
    """Every generator's state as plain Python values (all_gather_object cannot carry tensors in this torch)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


# -------------------------------------------------------------------------------------------- save / load
def save_full_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema, source, clock: dict,
                    info: DistInfo, keep: int) -> None:
    """Collective: every rank calls it; rank 0 writes, keeping the newest `keep` checkpoints. `clock` holds step,
    stage_start and stage name. Names are the plain model's (no DDP `module.`), so a state saved on N ranks resumes
    on M."""
    model_state, optim_state = get_state_dict(unwrap(model), optimizer,
                                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    ema_state = ema.state_dict() if ema is not None else None
    rng = gather_objects(capture_rng())
    loader = gather_objects(source.state_dict())
    if info.is_main:
        payload = {**clock, "world_size": info.world_size, "model": model_state, "optimizer": optim_state,
                   "ema": ema_state, "rng": rng, "loader": loader, "provenance": provenance()}
        out_dir = path.parent.parent
        # Room first, so that the folder peaks at `keep` checkpoints, not keep + 1: the oldest goes before the write,
        # but the newest keep - 1 stay through it, and the newest is always valid (written whole by this run, or the
        # one it resumed from, read back then). With keep 1 the only one goes only once the new one is in place.
        prune_checkpoints(out_dir, max(keep - 1, 1))
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
        prune_checkpoints(out_dir, keep)


def read_full_state(path: str | Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is reported the same way, as the one line below
        raise CheckpointError(f"{path}: not a readable training checkpoint ({str(err).splitlines()[0][:200]})") \
            from None
    if not isinstance(state, dict) or "optimizer" not in state or "step" not in state:
        raise CheckpointError(f"{path}: not a full training state (no optimizer / step); use init.mode: weights")
    return state


def read_newest_valid(out_dir: str | Path, is_main: bool) -> tuple[Path, dict]:
    """The newest checkpoint that reads back, and its state. Newer ones that do not (truncated, corrupted) are
    renamed `<name>.corrupt` by rank 0: kept for the user, but never tried or counted by pruning again (pruning
    must not keep a broken newest in place of the valid one). The fallback is said on stderr."""
    broken = []
    for path in reversed(list_checkpoints(out_dir)):
        try:
            state = read_full_state(path)
        except CheckpointError as err:
            broken.append((path, err))
            continue
        for bad, err in broken if is_main else ():
            bad.replace(bad.with_name(bad.name + ".corrupt"))
            print(f"{err}; renamed to {bad.name}.corrupt, resuming the newest valid checkpoint, {path.name}, instead",
                  file=sys.stderr, flush=True)
        return path, state
    if not broken:
        raise CheckpointError(f"{Path(out_dir) / CHECKPOINT_DIR}: no checkpoint to resume")
    raise CheckpointError(f"{broken[0][1]}; no older checkpoint reads back either (start afresh with --resume none)")


def check_state_fits(state: dict, model: nn.Module, source: str | Path) -> None:
    """A full state's model weights have this model's names and shapes (a full init at another resolution, or of
    another architecture, is named here rather than failing deep inside the loader)."""
    problems = shape_problems(unwrap(model).state_dict(), state["model"], max_listed=3)
    if problems:
        hint = " (another resolution: continue with init mode 'weights')" if "pos_embed" in problems else ""
        raise CheckpointError(f"{source}: a full state of another model{hint}: {problems}")


def load_full_state(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer, source, info: DistInfo,
                    same_stage: bool, continue_data: bool) -> None:
    """Weights and optimizer moments always; this rank's RNG only when resuming the same stage; the data position
    when resuming, or when continuing another stage that read the same stream (`continue_data`).
    Continuing another stage keeps that stage's moments, parameter by parameter, but this stage's parameter groups
    and hyperparameters (weight decay, betas, eps, the MoE layers' lr scale): the stage config says them."""
    optim_state = state["optimizer"]
    if not same_stage:
        _, current = get_state_dict(unwrap(model), optimizer, options=StateDictOptions(full_state_dict=True))
        optim_state = {"state": optim_state["state"], "param_groups": current["param_groups"]}
    set_state_dict(unwrap(model), optimizer, model_state_dict=state["model"], optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True))
    same_layout = state["world_size"] == info.world_size
    if same_stage and same_layout:
        restore_rng(state["rng"][info.rank])
    if same_stage or continue_data:
        # on a different world size, rank 0's position is the best guess (streaming's and the synthetic source's
        # positions are global)
        source.load_state_dict(state["loader"][info.rank if same_layout else 0])


def data_stream(settings: dict) -> dict:
    """What fixes the sequence of samples a stage reads (a stage config as a dict): the datasets and their options,
    the shuffle seed and the global batch. Caption dropout is drawn per sample, so it is not part of it."""
    data = weight_settings({"data": settings["data"]})["data"]  # the loader's speed options do not change it
    return {"kind": data["kind"], "options": data.get("options", {}), "seed": settings["seed"],
            "global_batch": settings["global_batch"]}


def reads_same_stream(state: dict, settings: dict) -> bool:
    """Whether a stage (settings) reads the stream the saved state's stage was reading, so it can go on from there."""
    return "config" in state and data_stream(state["config"]) == data_stream(settings)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Denoiser weights only, from a full-state checkpoint, a safetensors file or any file microdit.checkpoint reads.
    pos_embed and mask_token are left to the model: they follow its resolution, not the source's."""
    path = Path(path)
    if path.suffix == ".pt" and path.parent.name == CHECKPOINT_DIR:
        weights = read_full_state(path)["model"]
    else:
        weights, _ = read_checkpoint(path)
    weights = {k: v for k, v in weights.items() if k not in RECOMPUTABLE_BUFFERS}
    load_dit_state(model, weights, source=str(path))


def resolve_init(source: str, mode: str) -> Path:
    """A stage directory means its newest full state (mode full) or its final.safetensors (mode weights)."""
    path = Path(source)
    if path.is_dir():
        if mode == "full" and newest_checkpoint(path) and not (path / "final.safetensors").exists():
            raise UserError(f"init.from: {path} has not finished (no final.safetensors): a full init continues a "
                            "finished stage (name one of its checkpoint files to continue from an earlier step)")
        found = newest_checkpoint(path) if mode == "full" else path / "final.safetensors"
        if found is None or not found.exists():
            what = "full-state checkpoint" if mode == "full" else "final.safetensors"
            raise UserError(f"init.from: {path} has no {what}; has the previous stage finished?")
        return found
    if not path.is_file():
        raise UserError(f"init.from: {path}: no such file or directory")
    return path
