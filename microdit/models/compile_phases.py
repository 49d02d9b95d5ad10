"""Where compiling spends its time, by phase, read from the timers the compiler keeps itself
(`torch._dynamo.utils.compilation_time_metrics`: seconds per timed region, cumulative over the process).

A cold start over the 60 s goal (docs/benchmarks.md) has several suspects: tracing Python, generating and building
kernels, waiting for the kernel builds of a pool that several processes share, or benchmarking kernel configurations
on the GPU while other processes use it. These phases tell them apart without a profiler.
"""
from torch._dynamo.utils import compilation_time_metrics

# A phase is the compiler's timed regions it is made of, by name as torch 2.11-2.14 times them. Phases nest: `trace`,
# `cache_load`, `tune_matmuls` and `wait_for_builds` happen inside `compile` or `compile_backward`; `tune_kernels`
# happens at a kernel's first launch, outside both. A version that times none of a phase's regions leaves the phase
# out of a record (not timed), which is not the same as 0 (timed, nothing spent).
PHASES = {
    # dynamo's work at a graph's first call: tracing, the joint forward-backward graph, and compiling the forward
    # (or finding both in the compile cache)
    "compile": lambda name: name == "_compile.compile_inner",
    "trace": lambda name: name == "bytecode_tracing",
    "cache_load": lambda name: name == "AOTAutogradCache.inductor_load",
    # max-autotune: matmuls benchmarked against Triton templates while compiling
    "tune_matmuls": lambda name: name.endswith(("_template_autotuning", "_template_precompiling")),
    "wait_for_builds": lambda name: name == "async_compile.wait",
    # the backward graph compiles at the first backward, unless it came from the cache with the forward
    "compile_backward": lambda name: name == "compile_fx.<locals>.bw_compiler",
    # inductor benchmarks a kernel's candidate launch configurations at its first launch
    "tune_kernels": lambda name: name in ("CachingAutotuner.benchmark_all_configs",
                                          "CachingAutotuner.coordinate_descent_tuning"),
}


def phase_totals() -> dict[str, float]:
    """This process's compile seconds so far, by phase (only phases it has timed)."""
    totals: dict[str, float] = {}
    for name, seconds in list(compilation_time_metrics.items()):
        for phase, matches in PHASES.items():
            if matches(name):
                totals[phase] = totals.get(phase, 0.0) + sum(seconds)
    return totals


def phases_since(before: dict[str, float]) -> dict[str, float]:
    """Seconds spent in each phase since `before` (an earlier `phase_totals()`)."""
    return {phase: round(total - before.get(phase, 0.0), 2) for phase, total in phase_totals().items()}


def add_phases(records: list[dict[str, float]]) -> dict[str, float]:
    """The phases of several graphs or processes, summed."""
    total: dict[str, float] = {}
    for record in records:
        for phase, seconds in record.items():
            total[phase] = round(total.get(phase, 0.0) + seconds, 2)
    return total


def describe_phases(phases: dict | None) -> str:
    """`compile 80.1 (trace 9.0, ...), backward 40.2, kernel tuning 60.3`: phases in seconds, nested as they ran
    (phases timed but empty left out)."""
    if not phases:
        return ""
    inner = ", ".join(f"{name} {phases[key]:.1f}" for key, name in
                      (("trace", "trace"), ("cache_load", "cache loads"), ("wait_for_builds", "waiting for builds"),
                       ("tune_matmuls", "matmul tuning")) if phases.get(key))
    outer = [(f"compile {phases['compile']:.1f}" + (f" ({inner})" if inner else "")) if "compile" in phases else ""]
    outer += [f"{name} {phases[key]:.1f}" for key, name in
              (("compile_backward", "backward"), ("tune_kernels", "kernel tuning")) if phases.get(key)]
    return ", ".join(part for part in outer if part)
