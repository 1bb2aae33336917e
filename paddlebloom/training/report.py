"""What a run leaves for people to read: metrics.json and loss_curve.png."""
import json
import os

from ..checkpoint import write_file_atomic


def write_metrics(output_dir: str, metrics: dict) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)

    write_file_atomic(os.path.join(output_dir, "metrics.json"), write)


def plot_loss_curve(output_dir: str, train_history, eval_history, title: str = "training loss") -> str:
    """train_history: [{"step", "loss"}]; eval_history: [{"step", "eval_loss"}]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train_history:
        ax.plot([h["step"] for h in train_history], [h["loss"] for h in train_history], label="train loss", lw=1.5)
    if eval_history:
        ax.plot([h["step"] for h in eval_history], [h["eval_loss"] for h in eval_history], "o-", label="eval loss", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(output_dir, "loss_curve.png")
    write_file_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
