"""Server-rendered charts (matplotlib, Agg): no JavaScript library or CDN at run time."""

from __future__ import annotations

import io


def loss_chart_png(metrics_rows: list[dict | None], *, title: str = "") -> bytes:
    """Training/validation loss and learning rate by step, from a task's metrics events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["train_loss"]) for r in metrics_rows if r and r.get("train_loss") is not None]
    valid = [(r["step"], r["valid_loss"]) for r in metrics_rows if r and r.get("valid_loss") is not None]
    lr = [(r["step"], r["learning_rate"]) for r in metrics_rows if r and r.get("learning_rate") is not None]
    # preference runs (DPO, ORPO): the share of pairs whose chosen answer gets the higher implicit reward, 0..1
    accuracy = {split: [(r["step"], r[f"{split}_reward_accuracy"]) for r in metrics_rows
                        if r and r.get(f"{split}_reward_accuracy") is not None] for split in ("train", "valid")}
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    try:
        if train:
            ax.plot(*zip(*train, strict=True), label="train loss", color="#0d6efd", linewidth=1.5)
        if valid:
            ax.plot(*zip(*valid, strict=True), label="validation loss", color="#dc3545", marker="o", linewidth=1.5)
        for split, color, label in (("train", "#198754", "train reward accuracy"),
                                    ("valid", "#fd7e14", "validation reward accuracy")):
            if accuracy[split]:
                ax.plot(*zip(*accuracy[split], strict=True), label=label, color=color, linewidth=1.2,
                        marker="o" if split == "valid" else None)
        ax.set_xlabel("step")
        ax.set_ylabel("loss / reward accuracy" if accuracy["train"] or accuracy["valid"] else "loss")
        ax.grid(alpha=0.3)
        if lr:
            ax2 = ax.twinx()
            ax2.plot(*zip(*lr, strict=True), label="learning rate", color="#6c757d", linestyle="--", linewidth=1)
            ax2.set_ylabel("learning rate")
            ax2.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        if not (train or valid):
            ax.text(0.5, 0.5, "no metrics yet", ha="center", va="center", transform=ax.transAxes, color="#6c757d")
        if train or valid:
            ax.legend(loc="upper right", fontsize=8)
        if title:
            ax.set_title(title, fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
