"""Cold compilation shared out over processes (microdit/models/precompile.py): what the workers compile must be
exactly what the training process then asks for, so that every block graph is a compile-cache hit there."""
import pickle
import subprocess
import sys

import pytest
import torch
from torch._dynamo.utils import counters

from microdit.diffusion.edm import EDMConfig, edm_loss
from microdit.models.compile_phases import phase_totals, phases_since
from microdit.models.dit import MicroDiT, variant_config
from microdit.models.precompile import (
    TensorSpec, compile_regions, distinct_calls, precompile_blocks, record_region_calls,
)
from microdit.models.speed import SpeedOptions, apply_speed_options


def _dit(**overrides) -> MicroDiT:
    torch.manual_seed(0)
    # no MoE and equal block widths: two distinct graphs (the DiT block, the prompt block), to keep inductor's C++
    # code generation to one graph per worker on a 2-core machine
    config = variant_config("MicroDiT_Nano_2", input_size=4, depth=2, patch_mixer_depth=1, patch_mixer_dim=128,
                            qkv_ratio_range=(1.0, 1.0), ffn_ratio_range=(4.0, 4.0), patch_mixer_mlp_ratio=4.0,
                            experts_every_n=100, **overrides)
    return MicroDiT(config).train()


def _loss(dit: MicroDiT, mask_ratio: float = 0.0):
    data = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 4, 4, 4, generator=data), torch.randn(2, 1, 77, 1024, generator=data)
    return lambda: edm_loss(dit, x, y, EDMConfig(), mask_ratio)


def test_recorded_calls_describe_each_region_input_and_deduplicate_equal_graphs():
    dit = _dit()
    calls = record_region_calls(dit, _loss(dit), grad=True)
    assert [call.region for call in calls] == list(range(len(compile_regions(dit))))  # prompt block included
    x, y, c = calls[0].args
    # the patch embedding's output is a transposed view: strides are part of what a graph is compiled for
    assert x == TensorSpec((2, 4, 128), (512, 1, 4), 0, torch.float32, True)
    assert y.shape == (2, 77, 128) and c.shape == (2, 128) and y.requires_grad and c.requires_grad
    assert calls[0].training and calls[0].grad and calls[0].autocast is None
    assert [call.region for call in distinct_calls(dit, calls)] == [0, 3]  # mixer == backbone blocks; prompt block
    sampling = record_region_calls(dit.eval(), _loss(dit), grad=False)[0]  # eval mode is part of what compiles
    assert not sampling.training and not sampling.grad and not sampling.args[0].requires_grad
    assert len(distinct_calls(dit, [calls[0], sampling])) == 2


@pytest.mark.slow
def test_precompiled_graphs_are_compile_cache_hits_in_the_training_process(tmp_path, monkeypatch, capfd):
    """Masking gives the backbone blocks fewer tokens than the mixer's: three graphs, of which the training process
    compiles the backbone's after the mixer's and a worker compiles it first. Shapes that change between calls of
    one compiled function make dynamo re-trace with symbolic sizes unless compiling is static, and the two processes
    then compile different graphs (on the H200: 18 of 27 misses before `dynamic=False`)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "compile_cache"))  # the workers inherit it
    torch._dynamo.reset()
    reference, dit = _dit(), _dit()
    options = SpeedOptions(compile="blocks")
    apply_speed_options(dit, options)
    result = precompile_blocks(dit, options, _loss(dit, 0.5), grad=True, workers=2)
    assert (result["graphs"], result["compiled"], result["failed"]) == (3, 3, [])
    assert capfd.readouterr().err.count("precompile: share ") == 3  # the workers' line per graph, as it is done
    # what each graph and each worker's share took, for a cold start that is slower than expected
    regions = [region for region, _ in result["graph_seconds"]]
    assert len(set(regions)) == 3 and regions == sorted(regions) and len(result["share_seconds"]) == 2
    assert all(seconds > 0 for _, seconds in result["graph_seconds"])
    assert sum(result["share_seconds"]) == pytest.approx(sum(s for _, s in result["graph_seconds"]), abs=0.05)
    # and by compile phase, read from the compiler's own timers: each share compiled forward and backward graphs,
    # one after the other, within the share's time
    for seconds, phases in zip(result["share_seconds"], result["share_phase_seconds"], strict=True):
        assert 0 < phases["trace"] < phases["compile"] and phases["compile_backward"] > 0
        assert phases["compile"] + phases["compile_backward"] < seconds
        assert "cache_load" not in phases  # cold: nothing loaded from the cache

    counters.clear()
    torch.manual_seed(2)
    phases_before = phase_totals()
    loss = _loss(dit, 0.5)()
    grads = torch.autograd.grad(loss, list(dit.parameters()))
    assert counters["aot_autograd"]["autograd_cache_hit"] == 3  # nothing compiled here...
    assert counters["aot_autograd"].get("autograd_cache_miss", 0) == 0
    phases = phases_since(phases_before)  # ...only traced, and both directions' code loaded from the cache
    assert phases["cache_load"] > 0 and phases["trace"] > 0 and phases.get("compile_backward", 0) == 0
    torch.manual_seed(2)
    expected = _loss(reference, 0.5)()  # ...and the cached graphs compute what eager does
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-4)
    for got, want in zip(grads, torch.autograd.grad(expected, list(reference.parameters()))):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-3)


def test_tensor_spec_rebuilds_views_with_their_strides_and_storage_offset():
    """The sampler's cached caption values are a head-split view of one half of a fused key-value projection: a
    graph compiled for an input at offset 0 is another graph (found on the CPU: 6 of 9 sampling graphs missed)."""
    kv = torch.randn(2, 77, 256)
    values = kv.chunk(2, dim=-1)[1].unflatten(-1, (4, 32)).transpose(1, 2)
    for grad in (False, True):
        spec = TensorSpec.of(values, grad)
        rebuilt = spec.random("cpu")
        assert spec.storage_offset == 128 and rebuilt.requires_grad == grad
        assert (rebuilt.shape, rebuilt.stride(), rebuilt.storage_offset()) == (values.shape, values.stride(), 128)


def _printed_by(script) -> list[str]:
    """The words a Python script printed, run in a process of its own (spawned workers re-import it as a script)."""
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_workers_key_the_compile_cache_as_the_parent_does_when_it_runs_from_a_script(tmp_path):
    """The cache keys pickle tensor metadata, whose memory format pickle names after the first module that reaches
    it; a spawned worker re-imports the parent's script, and a script that imports torch then came first there:
    started from one, the training process found none of the workers' graphs (0 of 9 hits on the CPU). The keys
    also hold global settings that a script may change and a fresh process would not have."""
    script = tmp_path / "train.py"
    script.write_text(
        "import pickle\nimport torch\nfrom microdit.models.precompile import compile_pool, compiler_state\n"
        "if __name__ == '__main__':\n"
        "    torch.backends.cuda.matmul.fp32_precision = 'tf32'\n"
        "    torch.set_num_threads(1)\n"
        "    torch._inductor.config.coordinate_descent_tuning = True\n"
        "    with compile_pool(1) as pool:\n"
        "        in_worker = pool.submit(pickle.dumps, torch.contiguous_format).result()\n"
        "        state = pool.submit(compiler_state).result()\n"
        "    print(in_worker == pickle.dumps(torch.contiguous_format), state == compiler_state(), state['threads'])\n")
    assert _printed_by(script) == ["True", "True", "1"]


def test_ranks_each_compile_their_share_and_a_failed_share_does_not_stop_training(monkeypatch, capsys):
    import microdit.models.precompile as precompile

    dit = _dit()
    options = SpeedOptions(compile="blocks")
    shares = []
    monkeypatch.setattr(precompile, "compile_share", lambda config, options, calls, device, share, count:
                        shares.append((share, count)) or [(1, 2.5, {"compile": 2.0})])
    result = precompile_blocks(dit, options, _loss(dit), grad=True, workers=8, peer=1, peers=2)
    assert shares == [(1, 2)]  # no worker processes
    assert result == {"graphs": 2, "compiled": 1, "failed": [], "graph_seconds": [[1, 2.5]], "share_seconds": [2.5],
                      "share_phase_seconds": [{"compile": 2.0}]}

    def out_of_memory(*args):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(precompile, "compile_share", out_of_memory)
    result = precompile_blocks(dit, options, _loss(dit), grad=True, workers=8, peer=1, peers=2)
    assert result == {"graphs": 2, "compiled": 0, "failed": ["RuntimeError: CUDA out of memory"], "graph_seconds": [],
                      "share_seconds": [], "share_phase_seconds": []}
    assert "share 2/2 failed" in capsys.readouterr().err


@pytest.mark.parametrize("devices, rank, expected", [
    (["cpu", "cpu"], 1, (1, 2)),  # over gloo every rank compiles for the CPU: they share the graphs out
    ([f"cuda:{i}" for i in range(8)], 5, (0, 1)),  # one node of 8 GPUs: each rank precompiles its own with workers
    ([f"cuda:{i}" for i in range(4)] * 2, 6, (1, 2)),  # two nodes: with the rank of its index on the other node
])
def test_ranks_share_compiled_graphs_only_with_ranks_on_the_same_device(monkeypatch, devices, rank, expected):
    """A compiled graph's cache key names its device, index included, so a graph compiled on cuda:3 is no use to
    the rank on cuda:5."""
    import microdit.train.distributed as distributed

    def all_gather_object(into, mine):
        assert mine == devices[rank]
        into[:] = devices

    monkeypatch.setattr(distributed.dist, "all_gather_object", all_gather_object)
    info = distributed.DistInfo(rank, len(devices), rank % 8, torch.device(devices[rank]))
    assert distributed.device_peers(info) == expected
    assert distributed.device_peers(distributed.DistInfo()) == (0, 1)


def test_compile_phases_sum_the_compilers_timers_by_what_they_time(monkeypatch):
    """The compiler's timers are named per region; a phase adds up the ones it is made of."""
    from torch._dynamo.utils import compilation_time_metrics

    from microdit.models.compile_phases import add_phases, describe_phases, slowest_share_phases

    for name in list(compilation_time_metrics):
        monkeypatch.delitem(compilation_time_metrics, name)
    monkeypatch.setitem(compilation_time_metrics, "async_compile.wait", [1.0, 2.0])
    monkeypatch.setitem(compilation_time_metrics, "CachingAutotuner.benchmark_all_configs", [0.25])
    monkeypatch.setitem(compilation_time_metrics, "GraphLowering.codegen", [9.0])  # in no phase
    before = phase_totals()
    assert before == {"wait_for_builds": 3.0, "tune_kernels": 0.25}
    monkeypatch.setitem(compilation_time_metrics, "CachingAutotuner.coordinate_descent_tuning", [1.0])
    monkeypatch.setitem(compilation_time_metrics, "_compile.compile_inner", [4.0])
    assert phases_since(before) == {"wait_for_builds": 0.0, "tune_kernels": 1.0, "compile": 4.0}
    monkeypatch.setitem(compilation_time_metrics, "async_compile.wait", [1.5])  # torch._dynamo.reset() cleared it
    assert phases_since(before)["wait_for_builds"] == 1.5
    assert add_phases([{"compile": 1.0}, {"compile": 2.0, "trace": 0.5}]) == {"compile": 3.0, "trace": 0.5}
    assert slowest_share_phases([3.0, 9.0, 4.0], [{}, {"compile": 8.0}, {}]) == {"compile": 8.0}
    assert slowest_share_phases([], []) == {}
    assert describe_phases({"compile": 40.06, "compile_backward": 30.2, "trace": 9.0, "cache_load": 0.0,
                            "wait_for_builds": 20.0, "tune_kernels": 60.3}) == \
        "compile 40.1, backward 30.2 (of which trace 9.0, waiting for builds 20.0), kernel tuning 60.3"
    assert describe_phases({"compile": 0.0, "tune_kernels": 1.0}) == "kernel tuning 1.0" and describe_phases({}) == ""


def test_every_timer_a_phase_reads_is_one_the_installed_torch_has():
    """A timer renamed by a torch upgrade would silently drop out of its phase: each name must still be written in
    torch's source as a timed region's name."""
    from pathlib import Path

    from microdit.models.compile_phases import PHASES

    source = "\n".join(path.read_text(errors="replace") for folder in ("_dynamo", "_inductor", "_functorch")
                       for path in (Path(torch.__file__).parent / folder).rglob("*.py"))
    for phase, timers in PHASES.items():
        for timer in timers:
            assert f'"{timer}"' in source, f"{phase}: torch {torch.__version__} times no region named {timer!r}"


def test_the_kernel_build_pool_keeps_to_the_tasks_cpus():
    """Each precompiling worker inherits the compiler's settings, its pool size among them: on a node it was not
    bound to, one task would start up to 32 build processes in itself and in every worker."""
    import torch._inductor.config as inductor_config

    from microdit.models.precompile import compiler_state, default_workers, keep_compiling_within

    with inductor_config.patch(compile_threads=32):  # (monkeypatch would delete a config entry on undo)
        keep_compiling_within(8)
        assert inductor_config.compile_threads == 8
        assert pickle.loads(compiler_state()["inductor"])["compile_threads"] == 8  # what the workers load
        keep_compiling_within(16)  # never raised past what the CPUs it sees gave
        assert inductor_config.compile_threads == 8
    assert (default_workers(8), default_workers(1)) == (4, 1)


def test_bench_runs_as_one_task_of_a_launch_with_its_cpus_and_the_trainers_worker_count(tmp_path):
    """`bench --cpus N` measures one rank of the paper's launch (8 CPUs per GPU) on a bigger machine: the process
    and the precompiling workers it starts keep to N CPUs, with the kernel-build pool and the trainer's default
    worker count of a task allotted N. Run in a child: binding would narrow this test process's CPUs."""
    script = tmp_path / "rank.py"
    script.write_text(
        "import argparse, os, pickle\nfrom microdit.bench.command import _cpus_and_workers\n"
        "from microdit.models.precompile import compile_pool, compiler_state\n"
        "if __name__ == '__main__':\n"
        "    cpus, workers = _cpus_and_workers(argparse.Namespace(cpus=1, precompile_workers=-1))\n"
        "    with compile_pool(1) as pool:\n"
        "        seen = pool.submit(os.sched_getaffinity, 0).result()\n"
        "        state = pool.submit(compiler_state).result()\n"
        "    print(cpus, workers, len(seen), pickle.loads(state['inductor'])['compile_threads'])\n")
    assert _printed_by(script) == ["1", "1", "1", "1"]
