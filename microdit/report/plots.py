"""Training curves as PNG bytes (matplotlib, Agg: no display on cluster nodes).

The stages run one after another, each counting its own steps from 1; the figure puts them on one global step axis
(each stage starts where the previous one ended) and marks where each begins.
"""
import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import pandas as pd  # noqa: E402

from microdit.errors import UserError  # noqa: E402
from microdit.files import read_jsonl  # noqa: E402

SMOOTHING_POINTS = 50  # the moving mean spans about 1/50 of a stage's logged points: raw diffusion losses are noisy


def read_metrics(path: str | os.PathLike) -> pd.DataFrame:
    """The training lines (those with step, loss and lr) of a metrics JSONL file, by step; a step logged again by a
    requeued attempt (the steps after its last checkpoint are redone) counts once, as the later attempt logged it."""
    df = pd.DataFrame(read_jsonl(path, "metrics log"))  # pandas would take a missing path for JSON text
    missing = {"step", "loss", "lr"} - set(df.columns)
    if missing:
        raise UserError(f"{path}: no training lines (each needs step, loss and lr; missing {sorted(missing)})")
    return df.dropna(subset=["step", "loss", "lr"]).drop_duplicates("step", keep="last").sort_values("step")


def on_global_steps(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Each stage's lines with a `global_step` column. A stage that starts its clock afresh starts where the previous
    stage ended; one that resumed the previous stage's full state already continues its step count."""
    offset, counter, end, placed = 0, 0, 0, {}
    for stage, df in frames.items():
        if len(df) and df["step"].min() <= counter:  # a fresh clock
            offset = end
        placed[stage] = df.assign(global_step=df["step"] + offset)
        if len(df):
            counter, end = int(df["step"].max()), int(df["step"].max()) + offset
    return placed


def lr_changes(df: pd.DataFrame) -> bool:
    return len(df) > 1 and df["lr"].max() > df["lr"].min() * (1 + 1e-9)


def training_figure(frames: dict[str, pd.DataFrame]) -> bytes:
    """Loss (raw, smoothed, held-out) of every stage on one global step axis (frames from on_global_steps); below
    it the learning rate, only when some stage changes it (a constant rate is stated in the page's table instead)."""
    placed = {stage: df for stage, df in frames.items() if len(df)}
    with_lr = any(lr_changes(df) for df in placed.values())
    fig, axes = plt.subplots(2 if with_lr else 1, 1, figsize=(10, 5.2 if with_lr else 3.6), sharex=True,
                             squeeze=False, constrained_layout=True, height_ratios=[2, 1] if with_lr else None)
    ax_loss = axes[0, 0]
    for i, (stage, df) in enumerate(placed.items()):
        color = f"C{i}"
        window = max(1, len(df) // SMOOTHING_POINTS)
        ax_loss.plot(df["global_step"], df["loss"], lw=0.8, color=color, alpha=0.35 if window > 1 else 1.0,
                     label=f"{stage} training loss" + (" (raw)" if window > 1 else ""))
        if window > 1:
            ax_loss.plot(df["global_step"], df["loss"].rolling(window, min_periods=1).mean(), lw=1.6, color=color,
                         label=f"{stage} training loss, moving mean of {window} points")
        held_out = df.dropna(subset=["val_loss"]) if "val_loss" in df else df.iloc[:0]
        if len(held_out):
            ax_loss.plot(held_out["global_step"], held_out["val_loss"], "o", ms=4, color=color, mec="black",
                         mew=0.6, label=f"{stage} held-out loss")
            if "val_loss_ema" in held_out and held_out["val_loss_ema"].notna().any():
                ax_loss.plot(held_out["global_step"], held_out["val_loss_ema"], "s", ms=4, mfc="none", color=color,
                             label=f"{stage} held-out loss, EMA weights")
        for ax in axes[:, 0]:
            ax.axvline(df["global_step"].min(), color="gray", lw=0.8, ls=":")
        if with_lr:
            axes[1, 0].plot(df["global_step"], df["lr"], lw=1.5, color=color)
    ax_loss.set(ylabel="EDM loss")
    axes[-1, 0].set(xlabel="global step (stages one after another; dotted lines mark where each starts)")
    if with_lr:
        axes[1, 0].set(ylabel="learning rate")
        axes[1, 0].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    # below the axes, never over the curves
    fig.legend(*ax_loss.get_legend_handles_labels(), loc="outside lower center", ncol=2, frameon=False,
               fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
