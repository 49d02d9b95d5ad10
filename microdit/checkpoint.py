"""Reading and writing denoiser weights: the authors' torch.save'd state_dicts and our safetensors files.

Pickles are only ever read with torch.load(weights_only=True): a file that needs code to unpickle is refused. Plain
data that Composer checkpoints hold besides tensors (its clock's timedeltas, numpy RNG states) is let through.
Writes go to a temporary file in the same directory and are renamed into place, so a crash never leaves half a file.
"""
import datetime
import hashlib
import json
import math
import os
import pickle
import re
import warnings
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from microdit.errors import UserError
from microdit.files import atomic_write, sha256_file
from microdit.models.dit import VARIANTS, MicroDiT, MicroDiTConfig, variant_config
from microdit.provenance import provenance

RECOMPUTABLE_BUFFERS = ("pos_embed", "mask_token")
WRAPPER_SEGMENTS = ("_orig_mod", "module")  # what torch.compile and DDP add to names, at any depth


def plain_data_globals() -> list[tuple]:
    """The non-tensor types a Composer checkpoint pickles, as (object, pickled name) pairs for the weights-only
    unpickler; numpy's arrays are named after the numpy that wrote them (numpy.core before 2.0)."""
    pairs = [(datetime.timedelta, "datetime.timedelta"), (np.dtype, "numpy.dtype"), (np.ndarray, "numpy.ndarray")]
    multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        pairs += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return pairs + [(cls, f"numpy.dtypes.{cls.__name__}") for cls in dtypes if isinstance(cls, type)]


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message is one line naming the file and the reason."""


def save_dit(dit: MicroDiT, path: str | os.PathLike, arch: str, kind: str = "raw", extra: dict | None = None) -> None:
    """Denoiser weights as safetensors, with the architecture, config and provenance in the metadata (kind: 'raw'
    or 'ema')."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in dit.state_dict().items()}
    metadata = {"format": "microdit", "arch": arch, "kind": kind, "config": json.dumps(asdict(dit.config)),
                "provenance": json.dumps(provenance())}
    metadata.update({k: str(v) for k, v in (extra or {}).items()})

    def write(tmp: str) -> None:
        save_file(tensors, tmp, metadata=metadata)
        _sort_safetensors_header(tmp)

    atomic_write(path, write)


def _sort_safetensors_header(path: str) -> None:
    """Rewrite a safetensors header in place with its keys sorted. safetensors keeps metadata in a hash map and
    writes it in a different order on every call, so identical weights gave different bytes (and checkpoint
    digests); the same entries in compact JSON have the same length, and the header's space padding absorbs any
    difference in escaping."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:
            raise RuntimeError(f"{path}: the sorted safetensors header is {len(text)} bytes, {size} were written")
        f.seek(8)
        f.write(text.ljust(size))


def encoder_metadata(vae: str, text_encoder: str) -> dict:
    """What an export records of the encoders its latents came from: their names, and the VAE's downsampling when
    its config is on disk (images are latents x that factor)."""
    found = {key: value for key, value in (("vae", vae), ("text_encoder", text_encoder)) if value}
    config = os.path.join(vae, "config.json") if vae else ""
    blocks = json.loads(Path(config).read_text()).get("block_out_channels") if os.path.isfile(config) else None
    if blocks:
        found["vae_downsample"] = 2 ** (len(blocks) - 1)
    return found


def weights_digest(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint's contents. A safetensors header is hashed with its keys sorted: save_dit sorts it, but
    safetensors itself writes metadata in no fixed order (so did our earlier exports), and the digest must not
    depend on that. Nor on where the file was made: its provenance is left out (an export written again on another
    node is the same checkpoint)."""
    path = str(path)
    if not path.endswith(".safetensors"):
        return sha256_file(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: unreadable or truncated safetensors ({err})") from None
        header.get("__metadata__", {}).pop("provenance", None)
        digest.update(json.dumps(header, sort_keys=True).encode())
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """(denoiser state_dict with prefixes removed, metadata). Metadata has at least 'format'."""
    path = str(path)
    if os.path.isdir(path):
        inside = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".pt")))
        hint = f" (it holds {', '.join(inside[:4])})" if inside else ""
        raise CheckpointError(f"{path}: is a directory; expected a checkpoint file, .safetensors or .pt{hint}")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file")
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(plain_data_globals()):
            # torch's notes on pickle protocols would precede our one-line verdict
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch words every weights-only failure alike; only a named global means code would have run
        named = re.search(r"GLOBAL (\S+)", str(err))
        if named:
            raise CheckpointError(f"{path}: refused: the pickle needs to run code to load ({named.group(1)}); only "
                                  "tensors, containers and plain data are accepted") from None
        reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(err))
        raise CheckpointError(f"{path}: refused by the weights-only loader: not a plain PyTorch checkpoint "
                              f"({reason.group(1) if reason else _first_line(err)})") from None
    except Exception as err:  # the weights-only unpickler raises assorted errors on damaged input
        raise CheckpointError(f"{path}: not a checkpoint, or truncated ({type(err).__name__}: {_first_line(err)})") from None
    metadata = {"format": "torch.save"}
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict) and "step" in obj:  # one of our own (.pt)
        metadata = training_checkpoint_metadata(obj["config"], obj["step"], bool(obj.get("ema")))
    return _extract_state_dict(obj, path), metadata


def training_checkpoint_metadata(settings: dict, step, has_ema: bool) -> dict:
    """One of our training checkpoints (microdit.train.state) described with an export's metadata keys, from the
    stage settings it records: the model's config and the encoders its latents were made with."""
    model, data = settings.get("model") or {}, settings.get("data") or {}
    try:
        config = variant_config(model["arch"], input_size=model["latent_res"], in_channels=model["in_channels"],
                                caption_channels=model["caption_channels"],
                                pos_interp_scale=model["pos_interp_scale"], **(model.get("overrides") or {}))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"a training checkpoint whose recorded model settings are incomplete ({err})") from None
    return {"format": "microdit", "container": f"training checkpoint, step {step}", "arch": model["arch"],
            "kind": "raw (the file also holds its EMA)" if has_ema else "raw", "config": json.dumps(asdict(config)),
            **encoder_metadata(data.get("vae", ""), data.get("text_encoder", ""))}


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def _read_safetensors(path: str) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            metadata = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable or truncated safetensors ({_first_line(err)})") from None
    metadata.setdefault("format", "safetensors")
    return _denoiser_state(state), metadata


def _extract_state_dict(obj, path: str) -> dict:
    """A plain DiT state_dict, a LatentDiffusion one (keys 'dit.*'), or a Composer checkpoint {'state': {'model'}}."""
    if isinstance(obj, dict) and isinstance(obj.get("state"), dict) and isinstance(obj["state"].get("model"), dict):
        obj = obj["state"]["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state_dict (expected a mapping of parameter names to tensors)")
    return _denoiser_state(obj)


def _denoiser_state(state: dict) -> dict:
    """Names without wrapper segments; of a whole LatentDiffusion's state (dit.*, vae.*, ...), the denoiser's."""
    state = {".".join(part for part in k.split(".") if part not in WRAPPER_SEGMENTS): v for k, v in state.items()}
    if any(k.startswith("dit.") for k in state):
        state = {k[len("dit."):]: v for k, v in state.items() if k.startswith("dit.")}
    return state


def infer_config(state: dict, metadata: dict, latent_res: int | None = None) -> tuple[str, MicroDiTConfig]:
    """(arch, config) of the model a state_dict belongs to.

    Our safetensors carry the config. For the authors' files: architecture from the widths and depths, channels
    from the patch embedding, resolution and pos_interp_scale from `pos_embed` when present, else from
    `latent_res` with the paper's convention (scale = latent grid / 16)."""
    if "config" in metadata:
        try:
            config = json.loads(metadata["config"])
            config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
            return metadata.get("arch", "custom"), MicroDiTConfig(**config)
        except (ValueError, TypeError, AttributeError) as err:  # not JSON, not a mapping, or fields of another version
            raise CheckpointError(f"its metadata 'config' is not a MicroDiT config ({err})") from None
    depth = _count_blocks(state, "blocks.")
    mixer_depth = _count_blocks(state, "patch_mixer.")
    try:
        dim, in_channels = state["x_embedder.proj.weight"].shape[:2]
        caption_channels = state["y_embedder.y_proj.fc1.weight"].shape[1]
        mixer_dim = state["patch_mixer.0.norm1.weight"].shape[0] if mixer_depth else dim
    except KeyError as err:
        raise CheckpointError(f"not a MicroDiT state_dict: missing {err.args[0]!r}") from None
    arch = next((name for name, v in VARIANTS.items()
                 if (v["dim"], v["depth"], v["patch_mixer_depth"], v["patch_mixer_dim"]) ==
                 (dim, depth, mixer_depth, mixer_dim)), None)
    if arch is None:
        raise CheckpointError(f"unknown architecture: dim {dim}, depth {depth}, patch mixer {mixer_depth} x {mixer_dim}"
                              f"; known: {sorted(VARIANTS)}")
    patch = variant_config(arch).patch_size
    if "pos_embed" in state:
        grid, scale = _read_pos_embed(state["pos_embed"], int(dim))
        latent_res = grid * patch
    else:
        latent_res = 64 if latent_res is None else latent_res
        if latent_res <= 0 or latent_res % patch:
            raise CheckpointError(f"no pos_embed in the file, and a latent grid of {latent_res} is not a positive "
                                  f"multiple of the patch size {patch} (--resolution: a multiple of {8 * patch})")
        scale = latent_res / patch / 16
    return arch, variant_config(arch, input_size=latent_res, in_channels=int(in_channels),
                                caption_channels=int(caption_channels), pos_interp_scale=scale)


def _count_blocks(state: dict, prefix: str) -> int:
    indices = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def _read_pos_embed(pos_embed: torch.Tensor, dim: int) -> tuple[int, float]:
    """(grid side, pos_interp_scale) of a sin-cos table (1, grid², dim). Token 1 sits at column 1/scale; channel 0
    is sin(col) and channel dim/4 is cos(col) (lowest frequency 1)."""
    shape = tuple(pos_embed.shape)
    tokens = shape[1] if len(shape) == 3 else 0
    grid = math.isqrt(tokens)
    if len(shape) != 3 or shape[0] != 1 or shape[2] != dim or grid < 2 or grid * grid != tokens:
        raise CheckpointError(f"pos_embed has shape {shape}, expected (1, grid * grid, {dim}) for a grid of at "
                              "least 2 x 2 tokens")
    column = math.atan2(float(pos_embed[0, 1, 0]), float(pos_embed[0, 1, dim // 4]))
    if not (math.isfinite(column) and column > 0):  # all zeros, NaN, or not sin-cos positions at all
        raise CheckpointError(f"pos_embed is not a sin-cos position table (token 1 at column {column:g}, expected "
                              "a positive column 1/pos_interp_scale)")
    return grid, round(1.0 / column, 4)


def _check_config(config: MicroDiTConfig, state: dict) -> None:
    """Refuse a config the file's weights cannot have before a model is built from it: a metadata config could
    otherwise ask for a negative size (a traceback), thousands of blocks (minutes of building) or a position
    table of terabytes (the weights' shapes are compared on the meta device, but recomputed buffers absent from
    the file are allocated as the config says)."""
    for f in fields(config):
        least = 0 if f.name == "patch_mixer_depth" else 1
        if not _fits_field(f.default, getattr(config, f.name), least):
            expected = f"an integer >= {least}" if isinstance(f.default, int) else "finite numbers > 0"
            raise CheckpointError(f"config {f.name} is {getattr(config, f.name)!r}, expected {expected}")
    for name, prefix in (("depth", "blocks."), ("patch_mixer_depth", "patch_mixer.")):
        if getattr(config, name) != _count_blocks(state, prefix):
            raise CheckpointError(f"config {name} is {getattr(config, name)}, but the file has "
                                  f"{_count_blocks(state, prefix)} {prefix.rstrip('.')}")
    weights = sum(v.numel() for v in state.values())
    if "pos_embed" not in state and config.num_tokens * config.dim > weights:
        raise CheckpointError(f"config input_size {config.input_size} and dim {config.dim} ask for a position table "
                              f"of {config.num_tokens * config.dim:,} numbers, more than the file's {weights:,}")


def _meta_model(config: MicroDiTConfig) -> MicroDiT:
    """The model's shapes without storage (which also skips a random init that the load overwrites)."""
    try:
        with torch.device("meta"):
            return MicroDiT(config)
    except (ValueError, RuntimeError, AssertionError, ZeroDivisionError) as err:  # sizes that do not fit together
        raise CheckpointError(f"its config does not make a MicroDiT ({type(err).__name__}: {_first_line(err)})") \
            from None


def _fits_field(default, value, least: int) -> bool:
    """Whether a config value has its field's form: integers >= least, or finite positive numbers (in tuples)."""
    if isinstance(default, tuple):
        return (isinstance(value, tuple) and len(value) == len(default)
                and all(_fits_field(d, v, least) for d, v in zip(default, value)))
    if isinstance(default, int):
        return type(value) is int and value >= least
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def shape_problems(expected: dict, state: dict, max_listed: int) -> str:
    """'' if `state` fits the shapes of `expected` (recomputed buffers may be absent), else what does not."""
    missing = [k for k in expected if k not in state and k not in RECOMPUTABLE_BUFFERS]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                   if k in state and state[k].shape != v.shape]
    problems = ([f"missing {k}" for k in missing[:max_listed]] + [f"unexpected {k}" for k in unexpected[:max_listed]]
                + [f"shape {s}" for s in wrong_shape[:max_listed]])
    if not problems:
        return ""
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong_shape)} wrong shape"
    return f"does not match the model ({counts}): " + "; ".join(problems)


def load_dit_state(dit: MicroDiT, state: dict, source: str = "state_dict", max_listed: int = 5) -> None:
    """Strict load of finite weights. `pos_embed` and `mask_token` are recomputed buffers: used when present, kept
    when absent."""
    expected = dit.state_dict()
    problems = shape_problems(expected, state, max_listed)
    if problems:
        raise CheckpointError(f"{source}: {problems}")
    # NaN or inf weights load without complaint and then sample black images: name them instead
    broken = [k for k, v in state.items() if k in expected and v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise CheckpointError(f"{source}: {len(broken)} tensors hold NaN or infinite values: "
                              + ", ".join(broken[:max_listed]) + (", ..." if len(broken) > max_listed else ""))
    dit.load_state_dict({k: state.get(k, v) for k, v in expected.items()}, strict=True)


def load_dit(path: str | os.PathLike, latent_res: int | None = None, device="cpu") -> tuple[str, MicroDiT, dict]:
    """(arch, model, metadata) from any supported checkpoint file, after a strict load. Every size is checked
    against the file's tensors before the model takes any memory."""
    state, metadata = read_checkpoint(path)
    try:
        arch, config = infer_config(state, metadata, latent_res)
        _check_config(config, state)
        dit = _meta_model(config)
        problems = shape_problems(dit.state_dict(), state, max_listed=5)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    if problems:
        raise CheckpointError(f"{path}: {problems}")
    metadata["resolution_from"] = "config" if "config" in metadata else (
        "pos_embed" if "pos_embed" in state else "assumed (no pos_embed in the file)")
    dit = dit.to_empty(device=device)
    dit.mask_token.zero_()
    dit.reset_pos_embed()
    load_dit_state(dit, state, source=str(path))
    return arch, dit, metadata
