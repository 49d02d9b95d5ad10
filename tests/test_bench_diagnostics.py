"""The bench's step and diagnostics. `bench train`: the step is the trainer's. `bench layers`: the recorded calls are
the model's, the per-step totals add up, and what a device cannot run is reported rather than fatal. `bench train
--profile`: GPU kernels fall into the right kinds."""
import argparse
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from microdit.bench.layers import attention_flops, recorded_layer_calls, time_attention
from microdit.bench.profile import kernel_kind
from microdit.models.dit import create_dit
from microdit.models.layers import ExpertChoiceMoE
from microdit.train.config import load_stage_config

CPU = torch.device("cpu")
PAPER = Path(__file__).resolve().parents[1] / "config" / "stages" / "paper"
SMALL = ("model.latent_res=8", "model.overrides={depth: 3, patch_mixer_depth: 2}")  # MoE and SwiGLU blocks kept


def nano_stage(number: int, *settings: str):
    """A paper stage config as the bench reads it, on the CPU-sized architecture, eager and fp32."""
    return load_stage_config(PAPER / f"stage{number}.yaml", ["model.arch=MicroDiT_Nano_2", "compile=none",
                                                              "precision=fp32", *settings])


def test_bench_train_builds_the_trainers_optimizer_and_ema(tmp_path):
    """The bench times the trainer's step: the same AdamW groups (learning rates with the MoE layers at half,
    weight decay, betas, eps) over the same parameters, and the same EMA, as the trainer builds for the stage."""
    from microdit.bench.timing import build_denoiser, trainer_step
    from microdit.train.distributed import DistInfo
    from microdit.train.trainer import Trainer, example_batch

    cfg = nano_stage(4, *SMALL, f"out_dir={tmp_path}", "init=null", "data.kind=random", "steps=1", "global_batch=2",
                     "micro_batch=2", "progress=false", "launch.cluster=debug")
    trainer = Trainer(cfg, DistInfo())
    trainer.run()  # a step sets each group's learning rate: the constant schedule's peak at the group's scale
    model = build_denoiser(cfg, CPU)
    _, optimizer, ema = trainer_step(model, cfg, example_batch(cfg, CPU, 2))

    def groups(optimizer, model) -> list:
        names = {id(p): name for name, p in model.named_parameters()}
        return [({k: v for k, v in group.items() if k != "params"}, [names[id(p)] for p in group["params"]])
                for group in optimizer.param_groups]

    assert groups(optimizer, model) == groups(trainer.optimizer, trainer.raw)
    assert {g["name"]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups} == {
        "dense": (pytest.approx(8e-5), 0.1), "moe": (pytest.approx(4e-5), 0.1)}
    assert ema.cfg == trainer.ema.cfg and ema.cfg.decay == 0.9975 and ema.names == trainer.ema.names


def test_bench_step_updates_the_weights_and_their_average():
    """One bench step moves the weights (clipped AdamW) and the EMA toward them, at an averaging step."""
    from microdit.bench.timing import build_denoiser, trainer_step
    from microdit.train.trainer import example_batch

    cfg = nano_stage(3, *SMALL, "ema.decay=0.5")
    model = build_denoiser(cfg, CPU).train()
    step, _, ema = trainer_step(model, cfg, example_batch(cfg, CPU, 2))
    before = [p.detach().clone() for p in model.parameters()]
    step()
    after = list(model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    torch.testing.assert_close(ema.shadow, [(a + b.detach()) / 2 for a, b in zip(before, after)])


@pytest.mark.parametrize("stage, kept", [(1, 64), (2, 256)])
def test_recorded_calls_are_every_attention_and_moe_call_of_a_training_forward(stage, kept):
    attention, moe = recorded_layer_calls(nano_stage(stage, "micro_batch=2"))
    dit = create_dit("MicroDiT_Nano_2")  # 256 px: 16 x 16 = 256 tokens, a quarter kept when masked
    blocks, mixer = len(dit.patch_mixer) + len(dit.blocks), len(dit.patch_mixer)
    assert sum(attention.values()) == 2 * blocks + 1  # self- and cross-attention per block, the prompt block
    assert sum(moe.values()) == sum(isinstance(m, ExpertChoiceMoE) for m in dit.modules())

    self_attention, cross_attention = Counter(), 0
    for (q, k, _), n in attention.items():
        if q.shape[2] != 77:  # not the prompt block
            if k.shape[2] == 77:
                cross_attention += n
            else:
                self_attention[q.shape[2]] += n
    # the mixer sees every token, the backbone the kept ones
    assert cross_attention == blocks and self_attention == Counter({256: mixer}) + Counter({kept: len(dit.blocks)})
    # a view keeps its layout: v is the last third of the fused qkv projection, q a normalised copy
    (q, k, v), _ = next(iter(attention.items()))
    assert v.storage_offset > 0 and q.storage_offset == 0 and v.stride[2] == 3 * q.stride[2]


def test_attention_flops_match_the_steps_count():
    """The rate `bench layers` prints uses the FLOPs the step's count gives attention (matmuls on the meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    q, k = torch.randn(2, 3, 16, 8, requires_grad=True), torch.randn(2, 3, 5, 8, requires_grad=True)
    v = torch.randn(2, 3, 5, 8, requires_grad=True)
    with FlopCounterMode(display=False) as counter:  # the math form: what the count sees on the meta device
        weights = (q @ k.transpose(-1, -2) / 8 ** 0.5).softmax(-1)
        (weights @ v).sum().backward()
    assert attention_flops(q.shape, k.shape) == counter.get_total_flops()


def test_attention_totals_add_up_and_a_backend_the_device_lacks_is_reported():
    attention, _ = recorded_layer_calls(nano_stage(1, "micro_batch=1"))
    math = time_attention(attention, "math", torch.float32, CPU, repeats=1)
    assert math["ms_per_step"] == pytest.approx(
        sum(s["calls_per_step"] * s["ms_per_call"] for s in math["shapes"]), rel=1e-3)
    assert len(math["shapes"]) == len(attention)
    counted = sum(n * attention_flops(q.shape, k.shape) for (q, k, _), n in attention.items())
    assert math["tflop_per_s"] == pytest.approx(counted / math["ms_per_step"] / 1e9)
    cudnn = time_attention(attention, "cudnn", torch.float32, CPU, repeats=1)  # CUDA only
    assert cudnn["ms_per_step"] is None and all("error" in s for s in cudnn["shapes"])


def test_bench_layers_command_prints_a_line_per_backend_and_dispatch(capsys):
    from microdit.bench.command import add_modes

    parser = argparse.ArgumentParser()
    add_modes(parser)
    stage = str(PAPER / "stage2.yaml")
    settings = [arg for setting in ("model.arch=MicroDiT_Nano_2", *SMALL, "micro_batch=1", "precision=fp32")
                for arg in ("--set", setting)]
    args = parser.parse_args(["layers", "--stage", stage, *settings, "--attention-backend", "math",
                              "--attention-backend", "cudnn", "--device", "cpu"])
    args.func(args)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["layer"], r.get("backend", r.get("dispatch"))) for r in lines] == [
        ("attention", "math"), ("attention", "cudnn"), ("moe", "index"), ("moe", "one_hot")]
    assert all(r["stage"] == stage and r["microbatch"] == 1 for r in lines)
    assert lines[0]["ms_per_step"] > 0 and lines[1]["ms_per_step"] is None
    moe = lines[2]
    assert moe["ms_per_step"] == pytest.approx(sum(s["calls_per_step"] * s["ms_per_call"] for s in moe["shapes"]),
                                               rel=1e-3)


@pytest.mark.parametrize("name, kind", [
    # kernel names from the H200 profiles of run 1 (docs/bench-runs/2026-11-26-h200.jsonl), and inductor's prefixes
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64_1x4x1_cga1x1x1_kernel0_0",
     "attention"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
     "FusedOptimizerTensorListMetadata<4>, at::native::(anonymous", "optimizer and grad clipping (foreach)"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::bfloat16_copy_kernel_cuda(at::TensorIteratorBa",
     "copy or cast (eager)"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float, false>(int, float, float",
     "norm (eager)"),
    ("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::BinaryFunctor<c10",
     "elementwise (eager)"),
    ("triton_poi_fused_gelu_gelu_backward_4", "compiled pointwise"),
    ("triton_per_fused__scaled_dot_product_cudnn_attention_native_layer_norm_3", "compiled reduction"),
    ("triton_tem_fused_mm_0", "matmul"),
    ("aten::mm", "matmul"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("Memset (Device)", "memset or memcpy"),
    ("Command Buffer Full", "other"),
])
def test_kernels_are_told_apart_by_name(name, kind):
    assert kernel_kind(name) == kind


def test_a_gpu_profile_counts_kernels_not_the_annotated_regions_over_them():
    """Run 4's whole-model profile counted `Optimizer.step#AdamW.step` (a region's span on the device, 10.1 ms) on
    top of the AdamW kernels inside it."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from microdit.bench.profile import timed_events

    def event(key, us, device=DeviceType.CUDA, annotation=False):
        return SimpleNamespace(key=key, self_device_time_total=us, self_cpu_time_total=us, count=3,
                               device_type=device, is_user_annotation=annotation)

    averages = [event("Optimizer.step#AdamW.step", 30_000.0, annotation=True),
                event("multi_tensor_apply_kernel", 28_000.0), event("aten::mm", 500.0, device=DeviceType.CPU),
                event("nvjet_sm90_tst", 0.0)]
    assert timed_events(averages, cuda=True) == [("multi_tensor_apply_kernel", 28_000.0, 3)]
    assert [name for name, _, _ in timed_events(averages, cuda=False)] == [
        "Optimizer.step#AdamW.step", "multi_tensor_apply_kernel", "aten::mm"]


def test_a_failing_profile_is_recorded_without_losing_the_step_timing(monkeypatch):
    import microdit.bench.timing as timing

    def broken(run_step, device):
        raise AttributeError("no such profiler field")

    monkeypatch.setattr(timing, "time_breakdown", broken)
    measured = timing.time_training(nano_stage(1, *SMALL, "micro_batch=1"), CPU, steps=1, profile=True)
    assert measured["step_s"] > 0 and measured["profile"] == {"error": "AttributeError: no such profiler field"}
