"""Speed and memory switches change nothing they should not: same values and gradients as the reference path
(fp32 on the CPU), same parameter names; and the fake-tensor memory predictor counts bytes exactly."""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from microdit.bench.memory import LiveBytes, cuda_autocast_policy, estimate_training_memory
from microdit.diffusion.edm import EDMConfig, edm_loss, heun_sampler
from microdit.errors import UserError
from microdit.models.dit import MicroDiT, create_dit
from microdit.models.layers import LayerNorm
from microdit.models.latent_diffusion import sample_latents
from microdit.models.speed import RecomputedDiTBlock, SpeedOptions, apply_speed_options, compile_blocks
from microdit.train.config import load_stage_config

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "stages" / "paper"


def _nano(input_size: int = 8, **overrides) -> MicroDiT:
    torch.manual_seed(0)
    dit = create_dit("MicroDiT_Nano_2", input_size=input_size, **overrides)
    with torch.no_grad():  # give the zero-initialised output layers weights, so every path carries gradient
        for p in dit.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return dit


def _loss_and_grads(dit: MicroDiT, mask_ratio: float, autocast: bool = False):
    data = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 4, 8, 8, generator=data), torch.randn(3, 1, 77, 1024, generator=data)
    torch.manual_seed(2)  # same noise levels and token mask for every variant
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = edm_loss(dit.train(), x, y, EDMConfig(), mask_ratio)
    grads = torch.autograd.grad(loss, list(dit.parameters()), allow_unused=True)
    return loss.detach(), grads


def _assert_same(a, b, atol=1e-6, rtol=1e-5):
    torch.testing.assert_close(a[0], b[0], atol=atol, rtol=rtol)
    for ga, gb in zip(a[1], b[1]):
        assert (ga is None) == (gb is None)
        if ga is not None:
            torch.testing.assert_close(ga, gb, atol=atol, rtol=rtol)


def test_low_precision_norm_runs_in_bf16_under_autocast_and_is_plain_layer_norm_otherwise():
    torch.manual_seed(0)
    norm = LayerNorm(64, eps=1e-6, bias=False)
    torch.nn.init.normal_(norm.weight)
    norm.low_precision = True
    x = torch.randn(4, 16, 64)
    assert torch.equal(norm(x), F.layer_norm(x, (64,), norm.weight, None, 1e-6))  # no autocast: untouched
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = norm(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), F.layer_norm(x, (64,), norm.weight, None, 1e-6), atol=0.05, rtol=0.02)


def test_low_precision_norms_keep_names_and_stay_within_bf16_tolerance():
    reference, low = _nano(), _nano()
    apply_speed_options(low, SpeedOptions(low_precision_norm=True))
    assert list(low.state_dict()) == list(reference.state_dict())
    assert all(m.low_precision for m in low.modules() if isinstance(m, LayerNorm))
    ref_loss, _ = _loss_and_grads(reference, 0.5, autocast=True)
    low_loss, _ = _loss_and_grads(low, 0.5, autocast=True)
    torch.testing.assert_close(low_loss, ref_loss, rtol=0.02, atol=0)


@pytest.mark.parametrize("mask_ratio", [0.0, 0.5])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(mask_ratio):
    reference = _nano()
    recomputed = _nano()
    apply_speed_options(recomputed, SpeedOptions(checkpoint_blocks=5))
    blocks = [*recomputed.patch_mixer, *recomputed.blocks]
    assert [isinstance(b, RecomputedDiTBlock) for b in blocks] == [True] * 5 + [False] * 3
    assert list(recomputed.state_dict()) == list(reference.state_dict())
    _assert_same(_loss_and_grads(recomputed, mask_ratio), _loss_and_grads(reference, mask_ratio))


def test_regional_compile_traces_every_block_whole_and_matches_eager():
    """fullgraph=True fails on any graph break; the eager backend runs the captured graphs as they were traced,
    without code generation. A 7-layer Nano has 9 distinct block shapes, more than dynamo's default recompile
    limit (8), like XL (27): every one of them must get its own graph instead of silently falling back to eager."""
    from torch._dynamo.utils import counters

    reference, compiled = _nano(input_size=4, depth=7), _nano(input_size=4, depth=7)
    blocks = [*compiled.patch_mixer, *compiled.blocks]
    shapes = {(type(b.mlp), tuple(p.shape for p in b.parameters())) for b in blocks}
    assert len(shapes) > 8
    # the autocast switches inside the norms must trace too
    apply_speed_options(compiled, SpeedOptions(low_precision_norm=True, checkpoint_blocks=3))
    apply_speed_options(reference, SpeedOptions(low_precision_norm=True))
    counters.clear()
    compile_blocks(compiled, backend="eager", fullgraph=True)
    data = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 4, 4, 4, generator=data), torch.randn(2, 1, 77, 1024, generator=data)
    results = []
    for dit in (compiled, reference):
        torch.manual_seed(2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = edm_loss(dit.train(), x, y, EDMConfig(), 0.5)
        results.append((loss.detach(), torch.autograd.grad(loss, list(dit.parameters()))))
    _assert_same(*results, atol=1e-5, rtol=1e-3)
    assert counters["stats"]["unique_graphs"] > len(shapes)  # every block shape compiled, plus the prompt block
    assert torch._dynamo.config.optimize_ddp is False  # DDP's bucket-split graphs bypass the compile cache
    assert list(compiled.state_dict()) == list(reference.state_dict())


def test_whole_model_compile_traces_the_masked_training_loss_as_one_graph():
    """`compile: model` (the authors' route): a graph break would split the graph, and the comparison with per-block
    compilation would measure the split, not the route."""
    dit = _nano(depth=3, patch_mixer_depth=2).train()  # MoE and SwiGLU blocks in both parts
    apply_speed_options(dit, SpeedOptions(low_precision_norm=True))
    x, y = torch.randn(2, 4, 8, 8), torch.randn(2, 1, 77, 1024)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explained = torch._dynamo.explain(lambda: edm_loss(dit, x, y, EDMConfig(), 0.75))()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_precomputed_caption_context_gives_the_same_output(guidance):
    dit = _nano().eval()
    data = torch.Generator().manual_seed(3)
    x, t, y = torch.randn(2, 4, 8, 8, generator=data), torch.randn(2, generator=data), torch.randn(2, 1, 77, 1024,
                                                                                                    generator=data)
    with torch.no_grad():
        reference = dit(x, t, y, cfg=guidance)["sample"]
        cached = dit(x, t, dit.caption_context(y, guided=guidance != 1.0), cfg=guidance)["sample"]
    torch.testing.assert_close(cached, reference, atol=1e-6, rtol=1e-5)
    assert reference.abs().mean() > 1e-3  # the caption path carries signal (output layers are not zero)
    with torch.no_grad(), pytest.raises(ValueError, match="caption context of batch"):  # the other kind of context
        dit(x[:1], t[:1], dit.caption_context(y[:1], guided=guidance == 1.0), cfg=guidance)


@pytest.mark.slow
def test_caption_context_traces_whole_under_the_compiler():
    """The compiled sampler passes a CaptionContext: dynamo must take it in one graph, whole model or per block, and
    per-block graphs for sampling must fit beside the training ones in one process (the trainer's sample grids);
    fullgraph=True fails on a graph break and on the recompile limit. Backend "eager": tracing only (code generation
    is covered by the regional-compile test)."""
    torch._dynamo.reset()  # dynamo's recompile count is per code object: start clear of other tests' graphs
    dit = _nano()
    x, t, y = torch.randn(2, 4, 8, 8), torch.randn(2), torch.randn(2, 1, 77, 1024)
    with torch.no_grad():
        reference = dit.eval()(x, t, y, cfg=3.0)["sample"]
        context = dit.caption_context(y, guided=True)
        whole = torch.compile(dit, backend="eager", fullgraph=True)(x, t, context, cfg=3.0)["sample"]
    torch.testing.assert_close(whole, reference, atol=1e-6, rtol=1e-5)

    torch._dynamo.reset()
    compile_blocks(dit, backend="eager", fullgraph=True)
    edm_loss(dit.train(), x, y, EDMConfig(), 0.5).backward()  # the training graphs first, masked
    with torch.no_grad():
        per_block = dit.eval()(x, t, dit.caption_context(y, guided=True), cfg=3.0)["sample"]
    torch.testing.assert_close(per_block, reference, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_sample_latents_encodes_the_captions_once_with_the_same_result(guidance):
    dit = _nano().eval()
    calls = []
    dit.y_emb_preprocess.register_forward_hook(lambda *_: calls.append(1))
    noise, y = torch.randn(2, 4, 8, 8), torch.randn(2, 1, 77, 1024)
    cached = sample_latents(dit, noise, y, EDMConfig(), num_steps=4, guidance_scale=guidance)
    assert len(calls) == 1
    per_call = heun_sampler(dit, noise, y, EDMConfig(), num_steps=4, cfg=guidance)  # raw captions: each call encodes
    assert len(calls) == 1 + 7  # 2N - 1 network calls
    torch.testing.assert_close(cached, per_call, atol=1e-5, rtol=1e-5)


def test_speed_options_are_validated():
    for bad in (dict(compile="yes"), dict(moe_dispatch="dense"), dict(checkpoint_blocks=-1),
                dict(attention_backend="fast"), dict(compile="blocks", activation_budget=1.5),
                dict(activation_budget=0.5)):  # the budget is the compiler's: eager steps have none
        with pytest.raises(ValueError):
            SpeedOptions(**bad)
    dit = _nano()
    apply_speed_options(dit, SpeedOptions(low_precision_norm=True, checkpoint_blocks=3, moe_dispatch="one_hot",
                                          attention_backend="math"))
    assert sum(isinstance(b, RecomputedDiTBlock) for b in dit.modules()) == 3
    assert {m.dispatch for m in dit.modules() if hasattr(m, "num_experts")} == {"one_hot"}
    assert {m.backend for m in dit.modules() if hasattr(m, "backend")} == {"math"}
    assert all(m.low_precision for m in dit.modules() if isinstance(m, LayerNorm))


def test_a_process_that_compiles_nothing_never_imports_the_compiler():
    """The compiler's modules take 1.5 s to import: every `microdit` command paid that at start, compiling or not."""
    script = "\n".join([
        "import sys",
        "import microdit.eval.generate, microdit.sampling, microdit.train.launch, microdit.train.trainer",
        "from microdit.cli import build_parser",
        "from microdit.models.dit import create_dit",
        "from microdit.models.speed import SpeedOptions, apply_speed_options",
        "build_parser()",
        "apply_speed_options(create_dit('MicroDiT_Nano_2', input_size=8, caption_channels=32), SpeedOptions())",
        "print(sorted(m for m in sys.modules if m.startswith(('torch._inductor', 'torch._dynamo'))))"])
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_activation_budget_makes_compiled_blocks_keep_less_with_the_same_gradients():
    """Below 1, the compiler's partitioner saves fewer activations for backward and recomputes the rest; the values
    and gradients do not change. (A partitioner like inductor's, without its code generation: fast on the CPU.)"""
    from microdit.models.speed import set_activation_budget

    block = _nano(input_size=16).blocks[1]
    assert type(block.mlp).__name__ == "ExpertChoiceMoE"
    x, y, c = torch.randn(4, 64, 128, requires_grad=True), torch.randn(4, 77, 128), torch.randn(4, 128)
    kept, grads = {}, {}
    try:
        for budget in (1.0, 0.3):
            set_activation_budget(budget)
            torch._dynamo.reset()
            compiled = torch.compile(block, backend="aot_eager_decomp_partition", fullgraph=True)
            saved = []
            with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.nbytes) or t, lambda t: t):
                out = compiled(x, y, c)
            kept[budget] = sum(saved)
            grads[budget] = torch.autograd.grad(out.square().sum(), [x, *block.parameters()])
    finally:
        set_activation_budget(1.0)
    assert kept[0.3] < 0.75 * kept[1.0]
    torch.testing.assert_close(grads[0.3], grads[1.0], atol=1e-5, rtol=1e-4)


def test_attention_backends_compute_the_same_attention_also_when_compiled():
    """An attention backend picks kernels, not math: math and CPU flash agree on a masked forward and its
    gradients, and the choice reaches the compiled block (traced whole) rather than being dropped by the tracer."""
    torch.manual_seed(0)
    results = {}
    for backend in ("math", "flash"):
        dit = _nano()
        apply_speed_options(dit, SpeedOptions(attention_backend=backend))
        x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2) + 0.1, torch.randn(2, 1, 77, 1024)
        torch.manual_seed(1)
        out = dit(x, t, y, mask_ratio=0.5)["sample"]
        out.square().mean().backward()
        results[backend] = (out, dit.blocks[0].attn.qkv.weight.grad)
    torch.testing.assert_close(results["math"], results["flash"], atol=1e-5, rtol=1e-4)

    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def traced_ops(backend: str) -> set:
        ops = set()

        def capture(graph, example_inputs):
            ops.update(str(node.target) for node in graph.graph.nodes if node.op == "call_function")
            return make_boxed_func(graph.forward)

        torch._dynamo.reset()
        block = _nano().blocks[0]
        block.attn.backend = block.cross_attn.backend = backend
        compiled = torch.compile(block, backend=aot_autograd(fw_compiler=capture), fullgraph=True)
        compiled(torch.randn(2, 16, 128), torch.randn(2, 77, 128), torch.randn(2, 128))
        return ops

    flash = "aten._scaled_dot_product_flash_attention_for_cpu.default"
    assert flash in traced_ops("flash") and flash not in traced_ops("math")


# --------------------------------------------------------------------------------------------- memory prediction
def test_live_bytes_counts_storages_once_and_frees_them():
    with FakeTensorMode(), LiveBytes() as live:
        a = torch.empty(1024, 256)          # 1 MiB
        view = a.t()[:10]                   # a view: no new storage
        b = torch.empty(512, dtype=torch.bfloat16)
        assert live.now == 2 ** 20 + 1024
        del a, view
        assert live.now == 1024 and live.peak == 2 ** 20 + 1024
        del b
        assert live.now == 0


def test_cuda_autocast_policy_runs_norms_and_softmax_in_fp32_like_cuda():
    from torch.utils.checkpoint import checkpoint

    x = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.layer_norm(x, (8,)).dtype == torch.bfloat16 and x.softmax(-1).dtype == torch.bfloat16  # CPU's rule
        with cuda_autocast_policy():
            assert F.layer_norm(x, (8,)).dtype == torch.float32 and x.softmax(-1).dtype == torch.float32
            assert (x @ x.t()).dtype == torch.bfloat16  # matmuls keep autocast's bf16
            norm = LayerNorm(8, bias=False)
            norm.low_precision = True
            assert norm(x).dtype == torch.bfloat16  # low-precision norms opt out, as on CUDA
            # recomputation in backward sees the same rule (a TorchFunctionMode would not be active there)
            out = checkpoint(lambda t: F.layer_norm(t @ t.t(), (4,)).sum(), x, use_reentrant=False)
        with cuda_autocast_policy():
            out.backward()
    assert x.grad is not None and F.layer_norm(x, (8,)).dtype == torch.bfloat16  # restored


def test_estimate_counts_parameters_optimizer_state_and_activations_exactly():
    width, batch = 256, 32

    def build():
        with torch.device("meta"):
            return torch.nn.Sequential(torch.nn.Linear(width, width, bias=False), torch.nn.ReLU())

    def build_step(model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            model(torch.empty(batch, width)).sum().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    used = estimate_training_memory(build, build_step)
    weight = width * width * 4
    assert used["params"] == weight
    assert used["resident"] == 3 * weight + 4  # AdamW's exp_avg, exp_avg_sq and its float32 step count
    activation = batch * width * 4
    # at least: resident + the gradient + the input and ReLU output kept for backward
    assert used["peak"] >= used["resident"] + weight + 2 * activation


def test_predicted_memory_equals_live_bytes_of_a_real_step():
    """The fake-tensor prediction of the trainer's step (EMA included) and the same count over real CPU tensors
    agree (within 0.1 %: a few scalars)."""
    from microdit.bench.timing import build_denoiser, eager, predicted_memory, trainer_step
    from microdit.train.trainer import example_batch

    cfg = eager(load_stage_config(PAPER / "stage3.yaml", [
        "model.arch=MicroDiT_Nano_2", "model.latent_res=8", "model.overrides={depth: 3, patch_mixer_depth: 2}",
        "micro_batch=2"]))
    predicted = predicted_memory(cfg)

    torch.manual_seed(0)
    model = build_denoiser(cfg, torch.device("cpu"))
    live = LiveBytes()
    for p in model.parameters():
        live.track(p)
    with live, cuda_autocast_policy():
        step, _, _ = trainer_step(model, cfg, example_batch(cfg, torch.device("cpu"), 2))
        step()
        live.reset_peak()
        step()
    assert predicted["params_gib"] * 2 ** 30 == sum(p.nbytes for p in model.parameters())
    assert predicted["resident_gib"] * 2 ** 30 == live.now
    assert predicted["peak_gib"] * 2 ** 30 == pytest.approx(live.peak, rel=1e-3)


# ------------------------------------------------------------------------------------------- the prepared GPU run
def _nano_memory(stage: int) -> list[str]:
    return ["memory", "--stage", str(PAPER / f"stage{stage}.yaml"), "--set", "model.arch=MicroDiT_Nano_2",
            "--set", "micro_batch=1"]


@pytest.mark.slow
def test_suite_appends_results_failures_and_skips_within_its_budget(tmp_path):
    from microdit.bench.suite import run_suite

    items = [("memory", _nano_memory(1)),
             ("bad", ["memory", "--fit-gib", "lots"]),                  # argparse refuses: recorded, not fatal
             ("late", _nano_memory(2))]
    out = tmp_path / "bench.jsonl"
    out.write_text('{"label": "an earlier run"}\n')  # appended to, never truncated
    log = tmp_path / "stderr.log"
    counts = run_suite(items[:2], out, budget_s=600, log=log)
    counts_late = run_suite(items[2:], out, budget_s=1)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert counts == {"measured": 1, "failed": 1, "skipped": 0} and counts_late["skipped"] == 1
    assert [r["label"] for r in rows] == ["an earlier run", "memory", "bad", "late"]
    assert rows[1]["peak_gib"] > 0 and "invalid float value" in rows[2]["error"] and "budget" in rows[3]["skipped"]
    assert "===== bad" in log.read_text() and "invalid float value" in log.read_text()  # the whole reason is kept


@pytest.mark.parametrize("card", ["h200", "h100"])
def test_every_prepared_suite_item_parses_and_reads_its_stage(card, monkeypatch):
    """A typo in the prepared GPU run, an option or a stage setting, would only show on the GPU, where time is
    scarcest."""
    from microdit.bench.command import add_modes
    from microdit.bench.suite import expected_seconds, paper_suite

    monkeypatch.chdir(REPO)  # the suite names the paper stages from the repository root
    parser = argparse.ArgumentParser()
    add_modes(parser)
    suite = paper_suite(card)
    labels = [label for label, _ in suite]
    assert len(set(labels)) == len(labels)
    for _, args in suite:
        assert parser.parse_args(args).func is not None and expected_seconds(args) > 0


def test_suite_fits_the_card_and_a_second_call_runs_chosen_items(tmp_path, capsys, monkeypatch):
    from microdit.bench.command import add_modes
    from microdit.bench.suite import paper_suite

    def item(card: str, start: str) -> tuple:
        return next((label, args) for label, args in paper_suite(card) if label.startswith(start))

    # item 1: where the stage-1 step spends its time, the step as its config runs it (whole-model compile)
    label, args = paper_suite("h200")[0]
    assert label == "s1 mb256 profiled" and "--profile" in args and not any("compile" in a for a in args)
    # the authors' microbatch does not fit an 80 GB card; the fit follows the card
    assert item("h100", "s1 authors-config")[0].endswith("mb128") and item("h200", "s1 authors")[0].endswith("mb256")
    assert [item(card, "s4 mb64 ckpt")[0] for card in ("h200", "h100")] == ["s4 mb64 ckpt12", "s4 mb64 ckpt21"]
    # the one-hot dispatch is tried where the index one was measured: stage 1 as it fits (nothing checkpointed),
    # stage 4 with the card's activation budget
    s1 = item("h200", "s1 mb256 one-hot")[1]
    assert "moe_dispatch=one_hot" in s1 and not any(a.startswith(("checkpoint", "activation")) for a in s1)
    assert [item(card, "s4")[0] for card in ("h200", "h100")] == ["s4 mb64 budget0.7 one-hot",
                                                                   "s4 mb64 budget0.5 one-hot"]
    monkeypatch.chdir(REPO)
    parser = argparse.ArgumentParser()
    add_modes(parser)
    out = tmp_path / "bench.jsonl"
    args = parser.parse_args(["suite", "--out", str(out), "--budget-s", "0", "--card", "h100", "--items", "2,10-"])
    args.func(args)
    suite = paper_suite("h100")
    assert [json.loads(line)["label"] for line in out.read_text().splitlines()] == [
        label for label, _ in [suite[1], *suite[9:]]]
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["card"] == "h100"
    for bad in ("0", "3-2", "x", f"{len(suite) + 1}"):
        with pytest.raises(UserError, match="--items"):
            args.func(parser.parse_args(["suite", "--out", str(out), "--budget-s", "0", "--items", bad]))


def _fake_python(tmp_path, line: str) -> Path:
    """A stand-in interpreter for suite items: prints `line` (shell-quoted JSON) whatever it is asked to run."""
    path = tmp_path / "python"
    path.write_text(f'#!/bin/sh\necho "{line}"\n')
    path.chmod(0o755)
    return path


def test_suite_leaves_an_item_it_has_no_time_for_and_goes_on_with_shorter_ones(tmp_path):
    from microdit.bench.suite import expected_seconds, run_suite

    long_item = ["train", "--stage", str(PAPER / "stage1.yaml")]  # whole-model compile, as its config says
    assert expected_seconds(long_item) > expected_seconds(["train", "--stage", str(PAPER / "stage4.yaml")]) > \
        expected_seconds([*long_item, "--set", "compile=none"]) > expected_seconds(["layers"])
    fake_python = _fake_python(tmp_path, '{\\"ran\\": true}')
    out = tmp_path / "bench.jsonl"
    counts = run_suite([("long", long_item), ("short", ["layers"])], out, budget_s=100, python=str(fake_python))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert counts == {"measured": 1, "failed": 0, "skipped": 1}
    assert "takes about 300 s" in rows[0]["skipped"] and rows[1] == {"label": "short", "ran": True}


def test_a_timed_out_item_is_killed_with_its_whole_process_group(tmp_path):
    """The compiler's workers must not outlive an item past its time."""
    from microdit.bench.suite import _run_group

    pid_file = tmp_path / "grandchild.pid"
    script = (f"import subprocess, time; p = subprocess.Popen(['sleep', '60'], stdout=subprocess.DEVNULL, "
              f"stderr=subprocess.DEVNULL); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    with pytest.raises(subprocess.TimeoutExpired):
        _run_group([sys.executable, "-c", script], timeout_s=3)
    stat = Path(f"/proc/{int(pid_file.read_text())}/stat")

    def dead() -> bool:  # gone, or dead and not yet reaped
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    deadline = time.monotonic() + 10  # SIGKILL is delivered when the process is next scheduled: busy CI machines
    while not dead() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dead()


def test_an_item_killed_at_its_time_limit_is_recorded_with_its_stderr(tmp_path):
    from microdit.bench.suite import _run_item

    slow_python = tmp_path / "python"
    slow_python.write_text('#!/bin/sh\necho "compiling block 0" >&2\nexec sleep 30\n')
    slow_python.chmod(0o755)
    log = tmp_path / "stderr.log"
    (record,) = _run_item(str(slow_python), ["train"], timeout_s=2, label="s1 cold", log=log)
    assert record == {"args": ["train"], "error": "timed out after 2 s (time budget)"}
    assert "===== s1 cold\ncompiling block 0" in log.read_text()  # what it printed, kept for the docs
