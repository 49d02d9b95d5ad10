"""Learning-rate multipliers as pure functions of the global step (Composer's semantics, SPEC §3.2).

The trainer sets lr = base_lr x factor(step) x group scale before every step, so nothing but the step and the stage
config determines the lr: a stage that resumes another stage's full state simply gets its own lr (the reference had to
drop stored `initial_lr` / `base_lrs` keys to achieve the same).
"""
import math

from microdit.train.config import ScheduleConfig


def linear_warmup(step: int, warmup_steps: int) -> float:
    """0 at step 0, rising linearly to 1 at `warmup_steps`."""
    return min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0


def cosine_with_warmup(step: int, warmup_steps: int, t_max: int, alpha_f: float) -> float:
    """Linear warmup, then cosine from 1 to alpha_f reached at t_max and held after it."""
    if step < warmup_steps:
        return linear_warmup(step, warmup_steps)
    tau = min(1.0, (step - warmup_steps) / max(1, t_max - warmup_steps))
    return alpha_f + (1 - alpha_f) * 0.5 * (1 + math.cos(math.pi * tau))


def lr_factor(schedule: ScheduleConfig, step: int, t_max: int) -> float:
    """Multiplier of the base lr at global `step`; t_max is the step the stage ends at (Composer's max_duration)."""
    if schedule.kind == "cosine_warmup":
        return cosine_with_warmup(step, schedule.warmup_steps, t_max, schedule.alpha_f)
    if schedule.kind == "constant_warmup":
        return schedule.alpha * linear_warmup(step, schedule.warmup_steps)
    return schedule.alpha
