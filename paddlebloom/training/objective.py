"""What a fine-tuning run learns, as the trainer asks for it: TokenObjective (mean token NLL).

Other objectives (--do_generation's GenerationEval, paddlebloom.dpo's PreferenceObjective)
subclass it and reuse the trainer's loop, checkpoints, resume and reports as they are.
"""

import math

import paddle
import paddle.distributed as dist

from ..data.dataset import collate, load_examples
from ..runtime import parallel_context


def evaluate(model, examples, batch_size: int, pad_token_id: int) -> dict:
    """Mean token NLL (no label smoothing) and perplexity over the examples."""
    model.eval()
    total, count = 0.0, 0.0
    with paddle.no_grad():
        for start in range(0, len(examples), batch_size):
            ids, mask, labels = (
                paddle.to_tensor(a) for a in collate(examples[start : start + batch_size], pad_token_id)
            )
            out = model(ids, attention_mask=mask, labels=labels, return_logits=False)
            total += float(out.loss) * float(out.n_tokens)
            count += float(out.n_tokens)
    model.train()
    loss = total / max(count, 1.0)
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_tokens": int(count)}


class TokenObjective:
    """What supervised fine-tuning learns: mean token NLL, every scored token of a step weighing the same.

    The trainer asks its objective for everything that depends on what is learned (examples,
    batches, the loss, evaluation, extra reports), so other objectives (paddlebloom.dpo) reuse
    the loop, checkpoints, resume and reports as they are.
    """

    title, loss_label = "fine-tuning", "loss (nats / token)"

    def load(self, files, tokenizer, template, args, show_progress: bool):
        return load_examples(
            files, tokenizer, template, args.src_length, args.tgt_length, args.data_format, show_progress
        )

    def attach(self, model, args, config, model_dir: str) -> None:
        """Called once the trained model is built (an objective may need a reference model)."""

    def collate(self, examples, pad_token_id: int):
        return collate(examples, pad_token_id)

    def units(self, batch) -> float:
        """How much a micro-batch weighs in its step's mean loss (here: scored tokens)."""
        return float((batch[2] != -100).sum())

    def loss(self, model, batch, args):
        ids, mask, labels = (paddle.to_tensor(a) for a in batch)
        return model(
            ids, attention_mask=mask, labels=labels, label_smoothing=args.label_smoothing, return_logits=False
        ).loss

    def step_metrics(self) -> dict:
        """Metrics of the step just taken, beyond loss, learning rate and gradient norm."""
        return {}

    def evaluate(self, model, examples, batch_size: int, pad_token_id: int) -> dict:
        return evaluate(model, examples, batch_size, pad_token_id)

    def describe(self, result: dict) -> str:
        return f"eval loss {result['eval_loss']:.4f} ppl {result['eval_ppl']:.2f}"

    def report(self, output_dir: str, metrics: dict, title: str) -> None:
        """Plots beyond loss_curve.png."""


def sum_over_data_parallel(value: float) -> float:
    """Summed over every rank reading its own data: data-parallel and sharding ranks."""
    ctx = parallel_context()
    if ctx.data_degree == 1:
        return value
    t = paddle.to_tensor([value], dtype="float64")
    for group, degree in ((ctx.dp_group, ctx.dp_degree), (ctx.sharding_group, ctx.sharding_degree)):
        if degree > 1:
            dist.all_reduce(t, group=group)
    return float(t)
