"""Where compiling spends its time, by phase, read from the timers the compiler keeps itself
(`torch._dynamo.utils.compilation_time_metrics`: seconds per timed region, cumulative over the process).

A cold start over the 60 s goal (docs/benchmarks.md) has several suspects: tracing Python, generating and building
kernels, waiting for the kernel builds of a pool that several processes share, or benchmarking kernel configurations
on the GPU while other processes use it. These phases tell them apart without a profiler.
"""

# A phase is the compiler's timed regions it is made of, by name as torch 2.14 times them (tests/test_precompile.py
# checks that the installed torch still has each name). `compile` (a graph's first call: tracing, the joint graph,
# the forward's code, or both directions' from the cache) and `compile_backward` (the backward's code, at the first
# backward) are disjoint for the static graphs we compile. Inside them: `trace`, `cache_load`, and, in either
# direction, `wait_for_builds`. `tune_kernels` runs at a kernel's first launch, outside both.
PHASES = {
    "compile": ("_compile.compile_inner",),
    "trace": ("bytecode_tracing",),
    "cache_load": ("AOTAutogradCache.inductor_load",),
    "compile_backward": ("backward._backward_impl",),
    "wait_for_builds": ("async_compile.wait",),
    "tune_kernels": ("CachingAutotuner.benchmark_all_configs", "CachingAutotuner.coordinate_descent_tuning",
                     "CachingAutotuner.combo_sequential_autotune"),
}


def phase_totals() -> dict[str, float]:
    """This process's compile seconds so far, by phase. A phase appears once one of its timers has run in this
    process: absent means not entered yet, which differs from 0 in a `phases_since` window (entered before it)."""
    from torch._dynamo.utils import compilation_time_metrics  # here: importing dynamo costs every command seconds

    totals: dict[str, float] = {}
    for name, seconds in list(compilation_time_metrics.items()):
        for phase, timers in PHASES.items():
            if name in timers:
                totals[phase] = totals.get(phase, 0.0) + sum(seconds)
    return totals


def phases_since(before: dict[str, float]) -> dict[str, float]:
    """Seconds spent in each phase since `before` (an earlier `phase_totals()`). `torch._dynamo.reset()` clears the
    timers: a total below its earlier value then counts from the reset."""
    now = phase_totals()
    return {phase: round(total - before.get(phase, 0.0) if total >= before.get(phase, 0.0) else total, 2)
            for phase, total in now.items()}


def add_phases(records: list[dict[str, float]]) -> dict[str, float]:
    """The phases of several graphs, summed."""
    total: dict[str, float] = {}
    for record in records:
        for phase, seconds in record.items():
            total[phase] = round(total.get(phase, 0.0) + seconds, 2)
    return total


def slowest_share_phases(share_seconds: list[float], share_phases: list[dict]) -> dict:
    """The compile phases of the process (or rank) whose share took longest, {} when none finished: shares run at
    once, so the slowest sets the wall time."""
    return share_phases[share_seconds.index(max(share_seconds))] if share_seconds else {}


def describe_phases(phases: dict | None) -> str:
    """`compile 40.1, backward 30.2 (of which trace 9.0, waiting for builds 20.0), kernel tuning 60.3`, in seconds:
    the disjoint phases, then what ran inside them; phases with nothing spent left out."""
    if not phases:
        return ""
    def named(pairs) -> list[str]:
        return [f"{name} {phases[key]:.1f}" for key, name in pairs if phases.get(key)]

    outer = named((("compile", "compile"), ("compile_backward", "backward")))
    inner = named((("trace", "trace"), ("cache_load", "cache loads"), ("wait_for_builds", "waiting for builds")))
    text = ", ".join(outer) + (f" (of which {', '.join(inner)})" if inner and outer else "")
    return ", ".join(part for part in [text, *named((("tune_kernels", "kernel tuning"),))] if part)
