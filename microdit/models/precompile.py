"""Cold compilation of the per-block graphs (`compile: blocks`) split over processes.

A cold start compiles every distinct block graph one after another in one process (27 forward + backward graphs for
XL: 205 s on an H200 machine, measured), mostly single-threaded Python inside the compiler. The graphs do not depend
on each other, and the compiler keeps each one in its on-disk cache (TORCHINDUCTOR_CACHE_DIR) under a key made of
the graph and the shapes, strides, offsets and dtypes of its inputs, which a restart already reuses (20 s). So the
cold work can be shared out: one eager forward without gradients records what each block receives, several
processes compile the distinct blocks on random inputs with exactly those properties, each filling the shared
cache, and the training process then compiles from the cache as a restart would. With several ranks (DDP or FSDP)
each rank takes a share instead of spawning processes. Nothing here changes what is computed; a failed share only
means the training process compiles those blocks itself.
"""
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import torch
import torch._functorch.config as functorch_config
import torch._inductor.config as inductor_config
from torch.utils._pytree import tree_map_only

from microdit.models.compile_phases import add_phases, describe_phases, phase_totals, phases_since
from microdit.models.dit import MicroDiT, MicroDiTConfig
from microdit.models.speed import SpeedOptions, apply_speed_options


def compile_regions(dit: MicroDiT) -> list:
    """What `compile_blocks` compiles, each on its own: every DiT block and the prompt block."""
    return [*dit.patch_mixer, *dit.blocks, dit.y_emb_preprocess]


@dataclass(frozen=True)
class TensorSpec:
    """What a compiled graph is specialised on: shape, strides, offset into its storage (a view such as the values
    half of a fused key-value projection has one), dtype and whether it needs a gradient."""
    shape: tuple
    stride: tuple
    storage_offset: int
    dtype: torch.dtype
    requires_grad: bool

    @classmethod
    def of(cls, tensor: torch.Tensor, grad: bool) -> "TensorSpec":
        # recorded without gradients; in training every floating input of a block depends on the parameters
        return cls(tuple(tensor.shape), tuple(tensor.stride()), tensor.storage_offset(), tensor.dtype,
                   grad and tensor.is_floating_point())

    def random(self, device) -> torch.Tensor:
        span = 1 + sum((size - 1) * stride for size, stride in zip(self.shape, self.stride))
        storage = torch.empty(self.storage_offset + span, dtype=self.dtype, device=device)
        storage.normal_() if self.dtype.is_floating_point else storage.zero_()
        tensor = storage.as_strided(self.shape, self.stride, self.storage_offset)
        # detached, the strided view becomes a leaf of its own, which may require a gradient
        return tensor.detach().requires_grad_() if self.requires_grad else tensor


@dataclass(frozen=True)
class RegionCall:
    """How one compile region was called: its index in `compile_regions()`, its arguments' specs (a pytree
    of TensorSpec), train or eval mode, gradient mode and autocast dtype (None: off)."""
    region: int
    args: tuple
    training: bool
    grad: bool
    autocast: torch.dtype | None


def record_region_calls(dit: MicroDiT, forward, grad: bool) -> list[RegionCall]:
    """Run `forward()` (which calls `dit` under the caller's autocast) once eagerly without gradients and record each
    compile region's first call; `grad` says whether the real calls will build a graph for backward."""
    regions = compile_regions(dit)
    calls: dict[int, RegionCall] = {}
    device_type = next(dit.parameters()).device.type

    def recorder(index: int):
        def pre_hook(module, args):
            if index not in calls:
                autocast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
                specs = tree_map_only(torch.Tensor, lambda t: TensorSpec.of(t, grad), args)
                calls[index] = RegionCall(index, specs, module.training, grad, autocast)
        return pre_hook

    handles = [region.register_forward_pre_hook(recorder(i)) for i, region in enumerate(regions)]
    try:
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            forward()
    finally:
        for handle in handles:
            handle.remove()
    return [calls[i] for i in sorted(calls)]


def distinct_calls(dit: MicroDiT, calls: list[RegionCall]) -> list[RegionCall]:
    """One call per distinct graph: regions with the same type, parameter shapes, switches and inputs compile to the
    same graph (layer-wise scaling leaves XL's 35 regions with 27 distinct ones)."""
    regions = compile_regions(dit)
    seen, distinct = set(), []
    for call in calls:
        region = regions[call.region]
        key = (type(region).__name__, tuple(tuple(p.shape) for p in region.parameters()),
               repr(call.args), call.training, call.grad,
               call.autocast)
        if key not in seen:
            seen.add(key)
            distinct.append(call)
    return distinct


def compile_share(config: MicroDiTConfig, options: SpeedOptions, calls: list[RegionCall], device,
                  share: int = 0, shares: int = 1) -> list[tuple[int, float, dict]]:
    """Compile every `shares`-th of `calls` (from `share`) by running it forward (and backward) on random inputs
    with the recorded properties; returns (region, seconds, compile phases) for each, compiling and the first run
    included (on a GPU the time also shows kernels being tuned: models/compile_phases.py). The regions are built
    alone on `device` from a meta model, so a share costs its blocks' parameters, not the model's."""
    device = torch.device(device)
    with torch.device("meta"):
        dit = MicroDiT(config)
    apply_speed_options(dit, options)
    regions = compile_regions(dit)
    timings = []
    for call in calls[share::shares]:
        started, phases_before = time.perf_counter(), phase_totals()
        region = regions[call.region].to_empty(device=device).train(call.training)
        with torch.no_grad():
            for parameter in region.parameters():
                parameter.normal_(0.0, 0.02)
        args = tree_map_only(TensorSpec, lambda spec: spec.random(device), call.args)
        with torch.set_grad_enabled(call.grad), \
                torch.autocast(device.type, dtype=call.autocast or torch.bfloat16, enabled=call.autocast is not None):
            out = region(*args)
        if call.grad:
            out.backward(torch.ones_like(out))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append((call.region, time.perf_counter() - started, phases_since(phases_before)))
        regions[call.region].to_empty(device="meta")  # free the share's parameters before the next block
        # as each graph is done: a cold start killed at a time limit still says how far it got and at what pace
        print(f"precompile: share {share + 1}/{shares}: compile region {call.region} in {timings[-1][1]:.1f} s "
              f"({describe_phases(timings[-1][2])})", file=sys.stderr, flush=True)
    return timings


def precompile_in_processes(config: MicroDiTConfig, options: SpeedOptions, calls: list[RegionCall], device,
                            workers: int) -> dict:
    """Compile `calls` in `workers` fresh processes sharing the compile cache of this one (its environment, so
    TORCHINDUCTOR_CACHE_DIR); returns share_result() of the shares that finished, with their failures."""
    workers = max(1, min(workers, len(calls)))
    shares, failed = [], []
    with compile_pool(workers) as pool:
        futures = [pool.submit(compile_share, config, options, calls, str(device), share, workers)
                   for share in range(workers)]
        for future in futures:
            try:
                shares.append(future.result())
            except Exception as error:  # the training process compiles that share itself, only slower
                failed.append(_report_failure(error, "a worker's share"))
    return share_result(shares, failed)


# what the cache key reads of torch.backends.cuda.matmul; fp32_precision is TF32's switch since torch 2.9 (an older
# torch has none, and its allow_tf32 is not carried)
MATMUL_SETTINGS = ("fp32_precision", "allow_fp16_reduced_precision_reduction",
                   "allow_bf16_reduced_precision_reduction")


def compile_pool(workers: int) -> ProcessPoolExecutor:
    """Fresh (spawned) processes whose compile-cache keys are this one's."""
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_adopt_compiler_state,
                               initargs=(compiler_state(),))


def compiler_state() -> dict:
    """This process's settings that enter a compiled graph's cache key besides the graph and its inputs
    (torch._inductor.codecache.FxGraphHashDetails). A fresh process starts from the defaults, so a parent that
    changed one (a script's `torch.backends.cuda.matmul.allow_tf32 = True`, the launcher's `torch.set_num_threads`,
    which CPU kernels are specialised on) would have its workers compile graphs that it never finds."""
    matmul = torch.backends.cuda.matmul
    return {"inductor": inductor_config.save_config(), "functorch": functorch_config.save_config(),
            "deterministic": (torch.are_deterministic_algorithms_enabled(),
                              torch.is_deterministic_algorithms_warn_only_enabled()),
            "fill_uninitialized_memory": torch.utils.deterministic.fill_uninitialized_memory,
            "matmul": {name: getattr(matmul, name) for name in MATMUL_SETTINGS if hasattr(matmul, name)},
            "default_dtype": torch.get_default_dtype(), "threads": torch.get_num_threads()}


def _adopt_compiler_state(state: dict) -> None:
    """A worker's initializer: the parent's compiler_state(). It also forgets the parent's script, which spawning
    re-imports as `__mp_main__`: pickle names an object that has no module of its own, such as
    `torch.contiguous_format`, after the first module in sys.modules that reaches it, and where that script imports
    torch, the workers' keys (which pickle tensor metadata) named `__mp_main__` where the parent's name
    `torch._utils` (on the CPU: 0 of 9 cache hits, started from a script). The tasks refer to nothing in it."""
    sys.modules.pop("__mp_main__", None)
    inductor_config.load_config(state["inductor"])
    functorch_config.load_config(state["functorch"])
    deterministic, warn_only = state["deterministic"]
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.utils.deterministic.fill_uninitialized_memory = state["fill_uninitialized_memory"]
    for name, value in state["matmul"].items():
        setattr(torch.backends.cuda.matmul, name, value)
    torch.set_default_dtype(state["default_dtype"])
    torch.set_num_threads(state["threads"])


def share_result(shares: list[list[tuple[int, float, dict]]], failed: list[str]) -> dict:
    """{'compiled': graphs, 'failed': messages, 'graph_seconds': [[region, s]] by region, 'share_seconds': each
    share's compiling time, 'share_phase_seconds': each share's compile phases (its graphs' summed)}: what a slow
    cold start spent its time on (one slow graph, an uneven split, everything, or one phase such as tuning kernels
    on a shared GPU) beside the time processes take to start. Shares run at once: the slowest sets the wall time."""
    graphs = sorted((region, round(seconds, 2)) for share in shares for region, seconds, _ in share)
    return {"compiled": len(graphs), "failed": failed, "graph_seconds": [list(g) for g in graphs],
            "share_seconds": [round(sum(seconds for _, seconds, _ in share), 2) for share in shares],
            "share_phase_seconds": [add_phases([phases for _, _, phases in share]) for share in shares]}


def _report_failure(error: Exception, whose: str) -> str:
    message = f"{type(error).__name__}: {error}"
    print(f"precompile: {whose} failed ({message}); its blocks compile at the first step", file=sys.stderr,
          flush=True)
    return message


def visible_cpus() -> int:
    """The CPUs this process may run on: a SLURM task bound to its cpus_per_task sees those only."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(cpus: int | None = None) -> int:
    """One process per two of `cpus` (default: all this process may use), at least 1: each worker's compiler
    also builds kernels in a pool of its own (below)."""
    return max(1, (cpus or visible_cpus()) // 2)


def keep_compiling_within(cpus: int) -> None:
    """Size the compiler's kernel-build pool (inductor's compile_threads: one per visible CPU, up to 32) by the
    `cpus` a task was allotted. A task that sees the whole node (SLURM without CPU binding) would otherwise start
    up to 32 build processes in itself and in each precompiling worker, which inherit this setting, on every
    rank of the node. Not part of any compiled graph's cache key."""
    inductor_config.compile_threads = max(1, min(inductor_config.compile_threads or 1, cpus))


def precompile_blocks(dit: MicroDiT, options: SpeedOptions, forward, grad: bool, workers: int,
                      peer: int = 0, peers: int = 1) -> dict:
    """Fill the compile cache with `dit`'s block graphs before its first compiled call: `forward()` runs the model
    as training (`grad`) or sampling will, under the caller's autocast. `peers` processes (ranks) that compile for
    the same device as this one, this one being number `peer`, each compile a share in-process (call on each, then
    synchronise); alone, `workers` processes do. A compiled graph is specific to its device, index included (its
    cache key names it), so ranks on the GPUs of one node are not peers: each precompiles its own with workers.
    {'graphs'} and share_result()'s."""
    if options.compile != "blocks":
        raise ValueError(f"precompiling needs compile: blocks, got {options.compile!r}")
    calls = distinct_calls(dit, record_region_calls(dit, forward, grad))
    device = next(dit.parameters()).device
    if peers > 1:
        try:
            result = share_result([compile_share(dit.config, options, calls, device, peer, peers)], [])
        except Exception as error:  # as for a worker: the first step compiles this share instead
            result = share_result([], [_report_failure(error, f"share {peer + 1}/{peers}")])
        return {"graphs": len(calls), **result}
    return {"graphs": len(calls), **precompile_in_processes(dit.config, options, calls, device, workers)}
