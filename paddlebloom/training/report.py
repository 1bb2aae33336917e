"""What a run leaves for people to read: metrics.json and loss_curve.png."""

import json
import os

from ..atomic import write_file_atomic
from ..plots import pyplot, save_png


def write_metrics(output_dir: str, metrics: dict) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)

    write_file_atomic(os.path.join(output_dir, "metrics.json"), write)


def plot_loss_curve(
    output_dir: str, train_history, eval_history, title: str = "training loss", ylabel: str = "loss (nats / token)"
) -> str:
    """train_history: [{"step", "loss"}]; eval_history: [{"step", "eval_loss"}]."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train_history:
        ax.plot([h["step"] for h in train_history], [h["loss"] for h in train_history], label="train loss", lw=1.5)
    if eval_history:
        ax.plot(
            [h["step"] for h in eval_history], [h["eval_loss"] for h in eval_history], "o-", label="eval loss", lw=1.5
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_png(fig, os.path.join(output_dir, "loss_curve.png"))


def plot_metric_curves(path: str, train_history, eval_history, panels, title: str) -> str:
    """One PNG, a panel per (y label, metric names): each metric from the training steps (lines)
    and, as `eval_NAME`, from the evaluations (markers)."""
    plt = pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 3 * len(panels)), dpi=100, sharex=True, squeeze=False)
    for ax, (ylabel, names) in zip(axes[:, 0], panels):
        for name in names:
            steps = [h for h in train_history if name in h]
            if steps:
                ax.plot([h["step"] for h in steps], [h[name] for h in steps], label=name, lw=1.2)
            evals = [h for h in eval_history if f"eval_{name}" in h]
            if evals:
                ax.plot(
                    [h["step"] for h in evals], [h[f"eval_{name}"] for h in evals], "o--", label=f"eval {name}", lw=1.0
                )
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("optimizer step")
    axes[0, 0].set_title(title)
    return save_png(fig, path)
