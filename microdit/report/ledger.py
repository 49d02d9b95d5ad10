"""The cost ledger: what each training stage took in GPU time and dollars, from its train_stats.json.

Price: the paper's $3.75 per H100-hour, at which its four stages came to $1,890 (504 H100-hours)."""
from dataclasses import dataclass

PAPER_PRICE_PER_GPU_HOUR = 3.75
PAPER_TOTAL_DOLLARS = 1890.0


@dataclass(frozen=True)
class LedgerRow:
    stage: str
    gpus: int
    wall_hours: float
    steps: int
    images_seen: int
    img_per_s: float
    mfu: float | None
    final_loss: float | None
    price_per_gpu_hour: float

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.wall_hours

    @property
    def dollars(self) -> float:
        return self.gpu_hours * self.price_per_gpu_hour


def ledger_row(stage: str, stats: dict, price_per_gpu_hour: float) -> LedgerRow:
    missing = [k for k in ("wall_time_s", "gpu_count") if k not in stats]
    if missing:
        raise ValueError(f"train_stats of {stage} lacks {missing}")
    return LedgerRow(stage=stage, gpus=int(stats["gpu_count"]), wall_hours=float(stats["wall_time_s"]) / 3600,
                     steps=int(stats.get("steps", 0)), images_seen=int(stats.get("images_seen", 0)),
                     img_per_s=float(stats.get("mean_img_per_s", 0.0)),
                     mfu=None if stats.get("mfu") is None else float(stats["mfu"]),
                     final_loss=None if stats.get("final_loss") is None else float(stats["final_loss"]),
                     price_per_gpu_hour=price_per_gpu_hour)


def totals(rows: list[LedgerRow]) -> dict:
    return {"wall_hours": sum(r.wall_hours for r in rows), "gpu_hours": sum(r.gpu_hours for r in rows),
            "dollars": sum(r.dollars for r in rows), "images_seen": sum(r.images_seen for r in rows),
            "steps": sum(r.steps for r in rows)}
