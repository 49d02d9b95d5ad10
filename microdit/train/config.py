"""Stage configs: one YAML file per training stage, loaded into typed dataclasses and validated up front.

Every error names the file and the dotted field (`stage1.yaml: optim.lr: expected a number, got 'fast'`), so a bad
config fails in the launching shell rather than minutes later on a cluster node.
"""
import contextlib
import dataclasses
import math
import os
import re
import types
import typing
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from microdit.errors import UserError
from microdit.files import read_yaml
from microdit.models.dit import VARIANTS, MicroDiTConfig
from microdit.models.speed import SpeedOptions

SCHEDULES = ("cosine_warmup", "constant", "constant_warmup")
CLUSTERS = ("slurm", "local", "debug")


@dataclass
class ModelConfig:
    arch: str = "MicroDiT_XL_2"
    latent_res: int = 32
    in_channels: int = 4
    caption_channels: int = 1024
    pos_interp_scale: float = 1.0
    train_mask_ratio: float = 0.0
    p_mean: float = -0.6
    p_std: float = 1.2
    overrides: dict = field(default_factory=dict)  # any other MicroDiTConfig field, e.g. depth for tiny test models

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """One image's latents as the model takes them: (channels, height, width)."""
        return self.in_channels, self.latent_res, self.latent_res


@dataclass
class DataConfig:
    kind: str = "random"          # random: seeded synthetic latents; mds: microdit.data.loader (streaming shards)
    caption_len: int = 77
    cap_drop_prob: float = 0.1
    options: dict = field(default_factory=dict)  # passed through to the mds loader (directories, image size, ...)
    # what the latents were encoded with: recorded in the exported weights, where `sample` and `generate` find them
    vae: str = ""
    text_encoder: str = ""


@dataclass
class OptimConfig:
    lr: float = 2.4e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.1
    moe_half_lr: bool = True      # the reference meant to do this but its name filter matched nothing (SPEC §7.1)
    grad_clip: float = 0.25       # max global grad norm; 0 disables clipping


@dataclass
class ScheduleConfig:
    kind: str = "constant"
    warmup_steps: int = 0
    alpha_f: float = 0.0          # cosine end value, as a fraction of lr
    alpha: float = 1.0            # constant value, as a fraction of lr


@dataclass
class EMAConfig:
    decay: float = 0.9999
    start_step: int = 0           # global step from which the average starts; before it the EMA copies the weights
    every: int = 1


@dataclass
class InitConfig:
    from_: str = ""               # YAML key `from`: a stage output directory or a checkpoint file
    mode: str = "full"            # full: weights + optimizer + clock + data position; weights: model weights only


@dataclass
class SamplesConfig:
    every: int = 0                # 0 disables sample grids
    num: int = 8
    steps: int = 30
    guidance_scale: float = 5.0
    seed: int = 18
    prompts: list = field(default_factory=list)  # fixed prompts, encoded with data.text_encoder at the first grid
    captions: str = ""            # or: safetensors with 'caption_latents' (N,1,L,W); neither: null captions
    vae: str = ""                 # diffusers VAE name or directory to decode the grid; empty: show latent channels


@dataclass
class ValidationConfig:
    every: int = 0                # steps between held-out losses, plus one at the stage's end; 0: none
    datadirs: list = field(default_factory=list)  # MDS latents written by precompute (COCO-2014 val in the paper run)
    resolution: int = 0           # which latents_<resolution> column is read; 0: data.options.resolution
    num: int = 1024               # its first samples scored (rounded down to a multiple of the ranks)
    batch_size: int = 64          # per rank
    seed: int = 0                 # fixes each sample's noise level and noise for the whole run


@dataclass
class LaunchConfig:
    cluster: str = "debug"
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int = 2
    mem_gb: int = 0               # 0 leaves the cluster default
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    timeout_min: int = 60
    max_requeues: int = 10        # preemptions / time limits survived by requeueing
    cancel_on_exit: bool = False  # a stopped driver cancels its job (default: the job runs on, the next driver waits)
    sbatch_extra: list = field(default_factory=list)  # extra "--key=value" sbatch lines, passed as a list, no shell


@dataclass
class StageConfig:
    name: str
    steps: int                    # optimizer steps in this stage (a full-state init continues the global clock)
    global_batch: int
    micro_batch: int
    out_dir: str = "runs/stage"
    seed: int = 18
    precision: str = "bf16"       # bf16 autocast with fp32 master weights, or fp32
    compile: str = "none"         # none, model (whole denoiser) or blocks (regional; see MicroDiT.compile_blocks)
    low_precision_norm: bool = False  # LayerNorms in bf16 under autocast, as the authors trained
    checkpoint_blocks: int = 0    # DiT blocks (mixer first) whose activations are recomputed in backward
    attention_backend: str = "default"  # which SDPA kernels attention may use: default (PyTorch's pick), cudnn,
                                        # flash, efficient or math (`microdit bench layers` times each)
    activation_budget: float = 1.0  # with compile: the fraction of activations compiled graphs keep for backward,
                                    # recomputing the rest, cheapest first (models/speed.py)
    moe_dispatch: str = "index"   # how MoE layers route tokens: index (gather / scatter) or one_hot (the authors'
                                  # einsums); equal math, tested; `microdit bench layers` times both
    strategy: str = "ddp"         # ddp, or fsdp (FSDP2 fully_shard, reshard_after_forward=False ~ SHARD_GRAD_OP)
    log_every: int = 50
    save_every: int = 2500
    keep_checkpoints: int = 2
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ema: EMAConfig | None = None
    init: InitConfig | None = None
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    def speed_options(self) -> SpeedOptions:
        return SpeedOptions(compile=self.compile, low_precision_norm=self.low_precision_norm,
                            checkpoint_blocks=self.checkpoint_blocks, attention_backend=self.attention_backend,
                            activation_budget=self.activation_budget, moe_dispatch=self.moe_dispatch)

    def accumulation(self, world_size: int) -> int:
        """Microbatches per rank per step that make up the global batch on `world_size` ranks."""
        per_step = self.micro_batch * world_size
        if self.global_batch % per_step:
            raise UserError(f"global_batch {self.global_batch} is not a multiple of micro_batch {self.micro_batch} "
                            f"x {world_size} ranks; change micro_batch or the number of GPUs")
        return self.global_batch // per_step


# ------------------------------------------------------------------------------------------------ loading
def load_stage_config(path: str | Path, overrides: list[str] = ()) -> StageConfig:
    """Read a stage YAML, apply `key.sub=value` overrides (values parsed as YAML), build and validate."""
    path = Path(path)
    raw = read_yaml(path, "stage config")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of stage settings at the top level")
    for item in overrides:
        apply_override(raw, item)
    return stage_config_from_dict(raw, source=path.name)


def apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"--set {item!r}: expected key=value (e.g. optim.lr=1e-4)")
    set_setting(raw, key, yaml.safe_load(value), f"--set {item!r}")


def set_setting(raw: dict, key: str, value, where: str) -> None:
    """raw[a][b] = value for key 'a.b', creating sections on the way."""
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"{where}: {part} is not a section")
    node[leaf] = value


def stage_config_from_dict(raw: dict, source: str = "config") -> StageConfig:
    cfg = _build(StageConfig, raw, f"{source}: ")
    _validate(cfg, f"{source}: ")
    return cfg


def save_stage_config(cfg: StageConfig, path: str | Path) -> None:
    """The resolved settings as a stage YAML that load_stage_config reads back, written atomically."""
    from microdit.files import atomic_write

    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def to_dict(cfg) -> dict:
    """Plain dict in the YAML layout (the inverse of stage_config_from_dict)."""
    return {_yaml_key(f.name): _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _plain(value):
    """A setting as YAML writes it: a config built in Python may hold paths and tuples where YAML gives strings and
    lists (the trainer writes its stage.yaml at the end of a run: it must not fail there)."""
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


# a stage.yaml resolved by an earlier version may still hold these (docs/benchmarks.md: measured, did not win, or
# served only a removed feature)
REMOVED_FIELDS = {"autotune": "max-autotune, 2026-11-27",
                  "precompile_workers": "the precompile process pool, issue 28: a restart finds the compile cache"}


def _yaml_key(name: str) -> str:
    return name.rstrip("_")  # `from_` is spelled `from` in YAML


def _build(cls, raw, where: str):
    if not isinstance(raw, dict):
        raise UserError(f"{where.rstrip(': .')}: expected a mapping, got {raw!r}")
    fields = {_yaml_key(f.name): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        removed = REMOVED_FIELDS.get(unknown[0])
        raise UserError(f"{where}{unknown[0]}: " + (f"removed ({removed}); delete the line" if removed else
                                                      f"unknown field; expected one of {sorted(fields)}"))
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, f in fields.items():
        if key not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UserError(f"{where}{key}: missing (a required field)")
            continue
        kwargs[f.name] = _coerce(hints[f.name], raw[key], f"{where}{key}")
    return cls(**kwargs)


# a setting's type: what YAML values it accepts (never a bool for a number), and how an error names it
SETTING_TYPES = {bool: (bool, "true or false"), int: (int, "an integer"), float: ((int, float), "a number"),
                 str: (str, "a string"), list: (list, "a list"), dict: (dict, "a mapping")}


def _coerce(hint, value, where: str):
    optional = isinstance(hint, types.UnionType) and type(None) in hint.__args__
    if optional:
        if value is None:
            return None
        hint = next(a for a in hint.__args__ if a is not type(None))
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{where}.")
    if hint is float and isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    accepted, expected = SETTING_TYPES[hint]
    if not isinstance(value, accepted) or (hint in (int, float) and isinstance(value, bool)):
        raise UserError(f"{where}: expected {expected}, got {value!r}")
    if (bad := _non_finite(value, where)) is not None:  # YAML reads .nan and .inf as numbers; no bound refuses NaN
        raise UserError(f"{bad[0]}: expected a finite number, got {bad[1]}")
    return float(value) if hint is float else value


def _non_finite(value, where: str) -> tuple[str, float] | None:
    """(dotted name, value) of the first NaN or infinity in a setting, nested lists and mappings included."""
    if isinstance(value, float) and not math.isfinite(value):
        return where, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return next((bad for key, item in items if (bad := _non_finite(item, f"{where}.{key}")) is not None), None)


def _check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise UserError(f"{where}{message}")


def _validate(cfg: StageConfig, w: str) -> None:
    _check(cfg.steps > 0, w, f"steps: must be > 0, got {cfg.steps}")
    _check(cfg.micro_batch > 0, w, f"micro_batch: must be > 0, got {cfg.micro_batch}")
    _check(cfg.global_batch > 0 and cfg.global_batch % cfg.micro_batch == 0, w,
           f"global_batch: must be a positive multiple of micro_batch {cfg.micro_batch}, got {cfg.global_batch}")
    _check(cfg.precision in ("bf16", "fp32"), w, f"precision: expected bf16 or fp32, got {cfg.precision!r}")
    try:
        cfg.speed_options()
    except ValueError as err:
        raise UserError(f"{w}{err}") from None
    _check(cfg.strategy in ("ddp", "fsdp"), w, f"strategy: expected ddp or fsdp, got {cfg.strategy!r}")
    for name in ("log_every", "save_every", "keep_checkpoints"):
        _check(getattr(cfg, name) > 0, w, f"{name}: must be > 0, got {getattr(cfg, name)}")
    m = cfg.model
    _check(m.arch in VARIANTS, w, f"model.arch: unknown {m.arch!r}; expected one of {sorted(VARIANTS)}")
    _check(m.latent_res > 0 and m.latent_res % 2 == 0, w, f"model.latent_res: must be even and > 0, got {m.latent_res}")
    _check(0.0 <= m.train_mask_ratio < 1.0, w, f"model.train_mask_ratio: must be in [0, 1), got {m.train_mask_ratio}")
    _check(m.p_std >= 0, w, f"model.p_std: must be >= 0, got {m.p_std}")
    for name in ("in_channels", "caption_channels"):
        _check(getattr(m, name) > 0, w, f"model.{name}: must be > 0, got {getattr(m, name)}")
    known = set(MicroDiTConfig.__dataclass_fields__)
    _check(set(m.overrides) <= known, w, f"model.overrides: unknown {sorted(set(m.overrides) - known)}; expected "
                                         f"fields of MicroDiTConfig ({', '.join(sorted(known))})")
    d = cfg.data
    _check(d.kind in ("random", "mds"), w, f"data.kind: expected random or mds, got {d.kind!r}")
    _check(d.caption_len > 0, w, f"data.caption_len: must be > 0, got {d.caption_len}")
    _check(0.0 <= d.cap_drop_prob <= 1.0, w, f"data.cap_drop_prob: must be in [0, 1], got {d.cap_drop_prob}")
    o = cfg.optim
    _check(o.lr > 0, w, f"optim.lr: must be > 0, got {o.lr}")
    _check(len(o.betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in o.betas), w,
           f"optim.betas: expected two numbers in [0, 1), got {o.betas}")
    _check(o.grad_clip >= 0, w, f"optim.grad_clip: must be >= 0, got {o.grad_clip}")
    _check(o.eps > 0, w, f"optim.eps: must be > 0, got {o.eps}")
    _check(o.weight_decay >= 0, w, f"optim.weight_decay: must be >= 0, got {o.weight_decay}")
    s = cfg.schedule
    _check(s.kind in SCHEDULES, w, f"schedule.kind: expected one of {list(SCHEDULES)}, got {s.kind!r}")
    _check(s.warmup_steps >= 0, w, f"schedule.warmup_steps: must be >= 0, got {s.warmup_steps}")
    for name in ("alpha", "alpha_f"):
        _check(getattr(s, name) >= 0, w, f"schedule.{name}: must be >= 0 (a fraction of lr), got {getattr(s, name)}")
    _check(all(isinstance(text, str) for text in cfg.samples.prompts), w,
           f"samples.prompts: expected a list of strings, got {cfg.samples.prompts!r}")
    _check(not (cfg.samples.every > 0 and cfg.samples.prompts and cfg.samples.captions), w,
           "samples: prompts and captions both given; expected one of them")
    _check(not (cfg.samples.prompts and cfg.samples.every > 0 and not cfg.data.text_encoder), w,
           "samples.prompts: data.text_encoder is empty; expected the encoder that made the latents")
    if cfg.samples.every > 0 and cfg.samples.captions:
        _check(Path(cfg.samples.captions).is_file(), w,
               f"samples.captions: {cfg.samples.captions}: no such file (checked now, not at the first sample step)")
    v = cfg.validation
    _check(v.every >= 0, w, f"validation.every: must be >= 0 (0: no held-out loss), got {v.every}")
    if v.every > 0:
        _check(bool(v.datadirs) and all(isinstance(d, str) for d in v.datadirs), w,
               f"validation.datadirs: expected a list of latents directories, got {v.datadirs!r}")
        for name in ("num", "batch_size"):
            _check(getattr(v, name) > 0, w, f"validation.{name}: must be > 0, got {getattr(v, name)}")
        _check(v.resolution > 0 or isinstance(d.options.get("resolution"), int), w,
               f"validation.resolution: must be > 0 (or data.options.resolution set), got {v.resolution}")
    if cfg.ema is not None:
        _check(0.0 < cfg.ema.decay < 1.0, w, f"ema.decay: must be in (0, 1), got {cfg.ema.decay}")
        _check(cfg.ema.every > 0, w, f"ema.every: must be > 0, got {cfg.ema.every}")
    if cfg.init is not None:
        _check(bool(cfg.init.from_), w, "init.from: a stage directory or checkpoint file is required")
        _check(cfg.init.mode in ("full", "weights"), w, f"init.mode: expected full or weights, got {cfg.init.mode!r}")
    launch = cfg.launch
    _check(launch.cluster in CLUSTERS, w, f"launch.cluster: expected one of {list(CLUSTERS)}, got {launch.cluster!r}")
    _check(launch.nodes > 0 and launch.tasks_per_node > 0, w, "launch.nodes and launch.tasks_per_node must be > 0")
    _check(launch.cpus_per_task > 0, w, f"launch.cpus_per_task: must be > 0, got {launch.cpus_per_task}")
    _validate_launch_strings(launch, w)


# an sbatch option as a list item: `--key` or `--key=value`
SBATCH_OPTION = re.compile(r"--[A-Za-z][A-Za-z0-9_-]*(=.*)?", re.DOTALL)


def _validate_launch_strings(launch: LaunchConfig, w: str) -> None:
    """Launch strings become lines of the sbatch script submitit writes: a newline in one would be a line of its
    own there, and run. So no control character anywhere, and extra options only in the `--key[=value]` form."""
    named = [(f"launch.{f.name}", getattr(launch, f.name)) for f in dataclasses.fields(launch) if f.type is str]
    for i, item in enumerate(launch.sbatch_extra):
        _check(isinstance(item, str) and SBATCH_OPTION.fullmatch(item) is not None, w,
               f"launch.sbatch_extra.{i}: expected '--key' or '--key=value', got {item!r}")
        named.append((f"launch.sbatch_extra.{i}", item))
    for key, text in named:
        _check(not any(unicodedata.category(c) == "Cc" for c in text), w,
               f"{key}: control characters (a newline, a tab, ...) are not allowed, got {text!r}")
