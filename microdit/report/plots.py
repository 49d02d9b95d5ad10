"""Training curves as PNG bytes (matplotlib, Agg: no display on cluster nodes)."""
import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import pandas as pd  # noqa: E402

from microdit.errors import UserError  # noqa: E402
from microdit.files import read_jsonl  # noqa: E402


def read_metrics(path: str | os.PathLike) -> pd.DataFrame:
    """The training lines (those with step, loss and lr) of a metrics JSONL file, by step; a step logged again by a
    requeued attempt (the steps after its last checkpoint are redone) counts once, as the later attempt logged it."""
    df = pd.DataFrame(read_jsonl(path, "metrics log"))  # pandas would take a missing path for JSON text
    missing = {"step", "loss", "lr"} - set(df.columns)
    if missing:
        raise UserError(f"{path}: no training lines (each needs step, loss and lr; missing {sorted(missing)})")
    return df.dropna(subset=["step", "loss", "lr"]).drop_duplicates("step", keep="last").sort_values("step")


def loss_lr_figure(df: pd.DataFrame, title: str) -> bytes:
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(9, 3), constrained_layout=True)
    ax_loss.plot(df["step"], df["loss"], lw=0.8, alpha=0.4, label="loss")
    window = max(1, len(df) // 50)  # a light moving average: raw diffusion losses are very noisy
    ax_loss.plot(df["step"], df["loss"].rolling(window, min_periods=1).mean(), lw=1.5, label=f"mean of {window}")
    if "val_loss" in df and df["val_loss"].notna().any():
        held_out = df.dropna(subset=["val_loss"])
        ax_loss.plot(held_out["step"], held_out["val_loss"], marker="o", ms=3, lw=1.2, color="tab:red",
                     label="held-out (unmasked, fixed noise)")
        if "val_loss_ema" in held_out and held_out["val_loss_ema"].notna().any():
            ax_loss.plot(held_out["step"], held_out["val_loss_ema"], ls="--", lw=1.2, color="tab:purple",
                         label="held-out, EMA weights")
    ax_loss.set(xlabel="step", ylabel="EDM loss", title=f"{title}: loss")
    ax_loss.legend(frameon=False)
    ax_lr.plot(df["step"], df["lr"], lw=1.5, color="tab:green")
    ax_lr.set(xlabel="step", ylabel="learning rate", title=f"{title}: learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
