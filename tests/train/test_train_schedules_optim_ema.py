import pytest
import torch

from microdit.models.dit import create_dit
from microdit.models.layers import ExpertChoiceMoE
from microdit.train.config import EMAConfig, OptimConfig, ScheduleConfig
from microdit.train.ema import EMA
from microdit.train.optim import build_optimizer, set_lr
from microdit.train.schedules import lr_factor


def test_cosine_with_warmup_matches_composer_at_chosen_steps():
    s = ScheduleConfig(kind="cosine_warmup", warmup_steps=2500, alpha_f=0.33)
    t_max = 250_000
    assert lr_factor(s, 0, t_max) == 0.0
    assert lr_factor(s, 1250, t_max) == pytest.approx(0.5)
    assert lr_factor(s, 2500, t_max) == pytest.approx(1.0)
    midpoint = 2500 + (t_max - 2500) // 2
    assert lr_factor(s, midpoint, t_max) == pytest.approx(0.33 + 0.67 * 0.5, abs=1e-6)
    assert 2.4e-4 * lr_factor(s, t_max, t_max) == pytest.approx(7.92e-5)
    assert lr_factor(s, t_max + 10, t_max) == pytest.approx(0.33)  # tau is clipped to 1


def test_constant_schedules():
    assert lr_factor(ScheduleConfig(kind="constant", alpha=1.0), 260_000, 280_000) == 1.0
    s = ScheduleConfig(kind="constant_warmup", warmup_steps=500, alpha=1.0)
    assert [lr_factor(s, t, 50_000) for t in (0, 100, 500, 40_000)] == [0.0, 0.2, 1.0, 1.0]


def _nano():
    return create_dit("MicroDiT_Nano_2", input_size=8, caption_channels=32)


def test_moe_layers_train_at_half_lr():
    dit = _nano()
    optimizer = build_optimizer(dit, OptimConfig(lr=1e-3))
    set_lr(optimizer, 1e-3)
    groups = {g["name"]: g for g in optimizer.param_groups}
    moe = {id(p) for m in dit.modules() if isinstance(m, ExpertChoiceMoE) for p in (m.w1, m.w2, m.gate.weight)}
    assert moe and {id(p) for p in groups["moe"]["params"]} == moe
    assert groups["moe"]["lr"] == pytest.approx(5e-4) and groups["dense"]["lr"] == pytest.approx(1e-3)
    assert len(groups["dense"]["params"]) + len(moe) == len(list(dit.parameters()))
    assert all(g["weight_decay"] == 0.1 and g["betas"] == (0.9, 0.999) and g["eps"] == 1e-8 for g in groups.values())


def test_moe_half_lr_switch_off_is_one_group():
    optimizer = build_optimizer(_nano(), OptimConfig(lr=1e-3, moe_half_lr=False))
    set_lr(optimizer, 2e-4)
    assert [g["lr"] for g in optimizer.param_groups] == [2e-4]


def test_ema_follows_weights_until_start_then_averages():
    model = torch.nn.Linear(2, 1, bias=False)
    ema = EMA(model, EMAConfig(decay=0.9, start_step=2, every=1))
    values = [1.0, 2.0, 3.0, 4.0]
    expected = None
    for step, v in enumerate(values, start=1):
        model.weight.data.fill_(v)
        ema.update(model, step)
        expected = v if step <= 2 else 0.9 * expected + 0.1 * v
        assert ema.state_dict()["weight"][0, 0].item() == pytest.approx(expected)
    assert expected == pytest.approx(0.9 * (0.9 * 2 + 0.1 * 3) + 0.1 * 4)


def test_ema_every_n_steps_and_state_roundtrip():
    model = torch.nn.Linear(1, 1, bias=False)
    model.weight.data.fill_(0.0)
    ema = EMA(model, EMAConfig(decay=0.5, start_step=0, every=2))
    model.weight.data.fill_(4.0)
    ema.update(model, 1)  # skipped: not a multiple of `every`
    assert ema.state_dict()["weight"].item() == 0.0
    ema.update(model, 2)
    assert ema.state_dict()["weight"].item() == 2.0
    other = EMA(model, EMAConfig(decay=0.5))
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.shadow[0], ema.shadow[0])
