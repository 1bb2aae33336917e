"""DPO as an objective of the fine-tuning trainer: same loop, checkpoints, resume and reports.

A micro-batch holds whole pairs (the chosen sequences, then the rejected ones), weighs in its
step by its number of pairs, and its loss is the mean per-pair loss: TRL's `DPOTrainer` batch
loss. Logged per step and per evaluation (TRL's names): rewards/chosen, rewards/rejected,
rewards/accuracies (chosen reward > rejected reward), rewards/margins, logps/chosen,
logps/rejected; evaluations add preference_accuracy (the policy itself gives the chosen answer
the higher log-probability), which is meaningful before any training too.
"""

import os

import paddle

from ..training.objective import TokenObjective, sum_over_data_parallel
from ..training.report import plot_metric_curves
from .data import collate_pairs, load_preferences
from .loss import preference_loss, sequence_logps
from .reference import build_reference

PAIR_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


def _pair_sums(chosen_rewards, rejected_rewards, chosen, rejected) -> dict:
    values = (
        chosen_rewards,
        rejected_rewards,
        (chosen_rewards > rejected_rewards).astype("float32"),
        chosen_rewards - rejected_rewards,
        chosen,
        rejected,
    )
    return {name: float(v.sum()) for name, v in zip(PAIR_METRICS, values)}


def _add(into: dict, sums: dict) -> None:
    for k, v in sums.items():
        into[k] = into.get(k, 0.0) + v


class PreferenceObjective(TokenObjective):
    loss_label = "loss (mean over preference pairs)"

    def __init__(self, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0):
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
        self.title = f"DPO ({loss_type}, beta={beta})"
        self.reference = None
        self._step = {}

    def load(self, files, tokenizer, template, args, show_progress: bool):
        return load_preferences(
            files, tokenizer, template, args.src_length, args.tgt_length, args.data_format, show_progress
        )

    def attach(self, model, args, config, model_dir: str) -> None:
        self.reference = build_reference(model, args, config, model_dir)

    def collate(self, examples, pad_token_id: int):
        return collate_pairs(examples, pad_token_id)

    def units(self, batch) -> float:
        return float(len(batch[0]) // 2)

    def scores(self, model, batch):
        """(per-pair losses, chosen rewards, rejected rewards, policy log-probs of chosen, of rejected)."""
        ids, mask, labels = (paddle.to_tensor(a) for a in batch)
        average = self.loss_type == "ipo"  # TRL scores IPO with per-token mean log-probabilities
        policy = sequence_logps(model, ids, mask, labels, average)
        ref = self.reference.logps(ids, mask, labels, average)
        n = policy.shape[0] // 2
        losses, chosen_rewards, rejected_rewards = preference_loss(
            policy[:n], policy[n:], ref[:n], ref[n:], self.beta, self.loss_type, self.label_smoothing
        )
        return losses, chosen_rewards, rejected_rewards, policy[:n].detach(), policy[n:].detach()

    def loss(self, model, batch, args):
        losses, *rest = self.scores(model, batch)
        _add(self._step, {"pairs": float(losses.shape[0]), **_pair_sums(*rest)})
        return losses.mean()

    def step_metrics(self) -> dict:
        sums, self._step = self._step, {}
        pairs = sum_over_data_parallel(sums.pop("pairs", 0.0))
        return {name: sum_over_data_parallel(sums.get(name, 0.0)) / max(pairs, 1.0) for name in PAIR_METRICS}

    def evaluate(self, model, examples, batch_size: int, pad_token_id: int) -> dict:
        training = model.training
        model.eval()
        sums = {}
        with paddle.no_grad():
            for start in range(0, len(examples), batch_size):
                losses, chosen_rewards, rejected_rewards, chosen, rejected = self.scores(
                    model, self.collate(examples[start : start + batch_size], pad_token_id)
                )
                _add(
                    sums,
                    {
                        "loss": float(losses.sum()),
                        "preference_accuracy": float((chosen > rejected).astype("float32").sum()),
                        **_pair_sums(chosen_rewards, rejected_rewards, chosen, rejected),
                    },
                )
        if training:
            model.train()
        n = max(len(examples), 1)
        return {**{f"eval_{k}": v / n for k, v in sums.items()}, "eval_pairs": len(examples)}

    def describe(self, result: dict) -> str:
        return (
            f"eval loss {result['eval_loss']:.4f} preference accuracy {result['eval_preference_accuracy']:.3f} "
            f"reward accuracy {result['eval_rewards/accuracies']:.3f} margin {result['eval_rewards/margins']:.4f}"
        )

    def report(self, output_dir: str, metrics: dict, title: str) -> None:
        plot_metric_curves(
            os.path.join(output_dir, "dpo_rewards.png"),
            metrics["train_history"],
            metrics["eval_history"],
            panels=[
                (
                    "rewards (beta * log ratio to the reference)",
                    ("rewards/chosen", "rewards/rejected", "rewards/margins"),
                ),
                ("accuracy", ("rewards/accuracies", "preference_accuracy")),
            ],
            title=title,
        )
