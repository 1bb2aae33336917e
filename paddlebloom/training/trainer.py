"""The fine-tuning run: data → model (+ adapter) → optimizer steps → checkpoints → report.

Everything that can be wrong with the input (flags, data, model directory, parallel layout) is
checked before the output directory is touched, so a failed start leaves nothing behind.
"""
import math
import os
import shutil
import sys

import paddle
import paddle.distributed as dist
from tqdm import tqdm

from ..checkpoint import load_into, save_checkpoint
from ..config import BloomConfig
from ..data.dataset import BatchPlan, collate, load_examples
from ..data.formats import get_template
from ..loading import resolve_model_dir
from ..model import BloomForCausalLM
from ..runtime import init_parallel, parallel_context, quiet, use_all_cores
from ..tokenizer import BloomTokenizer
from .optim import autocast, build_optimizer, check_precision, clip_gradients, grad_scaler, sum_gradients_over_data_parallel
from .report import plot_loss_curve, write_metrics
from .sharding import optimizer_state_bytes_per_rank, resolve_sharding_degree
from .state import TrainedPart, newest_checkpoint, remove_stale_temporaries, restore_training_checkpoint, save_training_checkpoint


def log(message: str) -> None:
    if parallel_context().is_main:
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()


def build_model(args, config: BloomConfig, model_dir: str):
    """The model with what this run trains attached; returns (model, kind)."""
    model = BloomForCausalLM(config)
    load_into(model, model_dir)
    kind = "full"
    if args.lora:
        from ..lora.config import LoRAConfig
        from ..lora.model import apply_lora, load_lora

        kind = "lora"
        if args.lora_path:
            model = load_lora(model, args.lora_path, merge=False)
        else:
            lora = LoRAConfig(r=args.r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                              target_modules=LoRAConfig.parse_targets(args.lora_target_modules),
                              merge_weights=args.merge_weights, base_model_name_or_path=args.model_name_or_path)
            model = apply_lora(model, lora, seed=args.seed)
    elif args.prefix:
        from ..prefix.config import PrefixConfig
        from ..prefix.model import PrefixModel, load_prefix

        kind = "prefix"
        if args.prefix_path:
            model = load_prefix(model, args.prefix_path)
        else:
            model = PrefixModel(model, PrefixConfig(num_prefix_tokens=args.num_prefix_tokens, prefix_projection=args.prefix_projection,
                                                    prefix_projection_hidden_size=args.prefix_projection_hidden_size,
                                                    base_model_name_or_path=args.model_name_or_path), seed=args.seed)
    model.set_recompute(args.recompute)
    return model, kind


def evaluate(model, examples, batch_size: int, pad_token_id: int) -> dict:
    """Mean token NLL (no label smoothing) and perplexity over the examples."""
    model.eval()
    total, count = 0.0, 0.0
    with paddle.no_grad():
        for start in range(0, len(examples), batch_size):
            ids, mask, labels = (paddle.to_tensor(a) for a in collate(examples[start : start + batch_size], pad_token_id))
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
        return load_examples(files, tokenizer, template, args.src_length, args.tgt_length, args.data_format, show_progress)

    def attach(self, model, args, config, model_dir: str) -> None:
        """Called once the trained model is built (an objective may need a reference model)."""

    def collate(self, examples, pad_token_id: int):
        return collate(examples, pad_token_id)

    def units(self, batch) -> float:
        """How much a micro-batch weighs in its step's mean loss (here: scored tokens)."""
        return float((batch[2] != -100).sum())

    def loss(self, model, batch, args):
        ids, mask, labels = (paddle.to_tensor(a) for a in batch)
        return model(ids, attention_mask=mask, labels=labels, label_smoothing=args.label_smoothing, return_logits=False).loss

    def step_metrics(self) -> dict:
        """Metrics of the step just taken, beyond loss, learning rate and gradient norm."""
        return {}

    def evaluate(self, model, examples, batch_size: int, pad_token_id: int) -> dict:
        return evaluate(model, examples, batch_size, pad_token_id)

    def describe(self, result: dict) -> str:
        return f"eval loss {result['eval_loss']:.4f} ppl {result['eval_ppl']:.2f}"

    def report(self, output_dir: str, metrics: dict, title: str) -> None:
        """Plots beyond loss_curve.png."""


def _sum_over_data_parallel(value: float) -> float:
    """Summed over every rank reading its own data: data-parallel and sharding ranks."""
    ctx = parallel_context()
    if ctx.data_degree == 1:
        return value
    t = paddle.to_tensor([value], dtype="float64")
    for group, degree in ((ctx.dp_group, ctx.dp_degree), (ctx.sharding_group, ctx.sharding_degree)):
        if degree > 1:
            dist.all_reduce(t, group=group)
    return float(t)


def train_step(model, optimizer, named, batches, args, scaler=None, objective=None):
    """One optimizer step over micro-batches (numpy ids, mask, labels); returns (loss, grad norm, lr).

    Every scored token of the step weighs the same, whichever micro-batch or data-parallel rank
    it is in: accumulation then equals one big batch exactly (an objective's `units` say what a
    micro-batch weighs: tokens here, preference pairs for DPO).
    """
    objective = objective or TokenObjective()
    step_units = _sum_over_data_parallel(sum(objective.units(batch) for batch in batches))
    loss_sum = 0.0
    for batch in batches:
        units = objective.units(batch)
        with autocast(args):
            mean_loss = objective.loss(model, batch, args)
        loss = mean_loss * (units / max(step_units, 1.0))
        (scaler.scale(loss) if scaler else loss).backward()
        loss_sum += float(mean_loss) * units
    sum_gradients_over_data_parallel(named, optimizer)
    if scaler:
        scaler.unscale_(optimizer)
    norm = clip_gradients(named, args.max_grad_norm, optimizer)
    lr = optimizer.get_lr()
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.clear_grad()
    return _sum_over_data_parallel(loss_sum) / max(step_units, 1.0), norm, lr


def _save_final(trained: TrainedPart, output_dir: str) -> None:
    """Write the final model into output_dir beside its checkpoints, file by file atomically."""
    staging = os.path.join(output_dir, ".final.tmp-run")
    trained.save(staging)
    if parallel_context().is_main:
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
        shutil.rmtree(staging, ignore_errors=True)


def run(args, objective=None) -> dict:
    if objective is None and getattr(args, "do_generation", False):
        from .generation_eval import GenerationEval  # imports this module

        objective = GenerationEval(args)
    objective = objective or TokenObjective()
    quiet()
    use_all_cores()
    ctx = init_parallel(args.tensor_parallel_degree, resolve_sharding_degree(args))
    check_precision(args)
    model_dir = resolve_model_dir(args.model_name_or_path)
    config = BloomConfig.load(model_dir)
    config.validate_tensor_parallel(ctx.tp_degree)
    tokenizer = BloomTokenizer.from_pretrained(model_dir)
    template = get_template(args.template)
    show = ctx.is_main and not args.disable_tqdm
    load = lambda files: objective.load(files, tokenizer, template, args, show)
    train_set = load(args.train_file) if args.do_train else []
    eval_set = load(args.validation_file) if args.validation_file else []

    paddle.seed(args.seed)
    model, kind = build_model(args, config, model_dir)
    objective.attach(model, args, config, model_dir)
    trained = TrainedPart(kind, model, config, model_dir, merge=not args.save_shards)
    metrics = {"kind": kind, "tensor_parallel_degree": ctx.tp_degree, "train_history": [], "eval_history": [],
               "data_parallel_degree": ctx.dp_degree, "sharding_parallel_degree": ctx.sharding_degree}
    if args.do_train:
        metrics.update(train(args, model, trained, train_set, eval_set, tokenizer.pad_token_id, objective))
    if args.do_eval:
        metrics["final_eval"] = objective.evaluate(model, eval_set, args.per_device_eval_batch_size, tokenizer.pad_token_id)
        log(objective.describe(metrics["final_eval"]))
    if ctx.is_main:
        os.makedirs(args.output_dir, exist_ok=True)
        write_metrics(args.output_dir, metrics)
        if metrics["train_history"]:
            plot_loss_curve(args.output_dir, metrics["train_history"], metrics["eval_history"], f"{kind} {objective.title}, TP={ctx.tp_degree}", objective.loss_label)
            objective.report(args.output_dir, metrics, f"{kind} {objective.title}, TP={ctx.tp_degree}")
    return metrics


def train(args, model, trained: TrainedPart, train_set, eval_set, pad_token_id: int, objective=None) -> dict:
    objective = objective or TokenObjective()
    ctx = parallel_context()
    plan = BatchPlan(len(train_set), args.per_device_train_batch_size, args.gradient_accumulation_steps, ctx.data_degree, ctx.data_rank, args.seed)
    total_steps = args.max_steps if args.max_steps > 0 else max(1, math.ceil(args.num_train_epochs * plan.steps_per_epoch))
    optimizer, schedule, named = build_optimizer(model, args, total_steps)
    scaler = grad_scaler(args)
    os.makedirs(args.output_dir, exist_ok=True)
    remove_stale_temporaries(args.output_dir)
    resume = args.resume_from_checkpoint or (None if args.overwrite_output_dir else newest_checkpoint(args.output_dir))
    history, eval_history, start = [], [], 0
    if resume:
        state = restore_training_checkpoint(trained, optimizer, resume)
        start, history, eval_history = state["global_step"], state["train_history"], state["eval_history"]
        schedule.step(start)
        log(f"resumed from {resume} at step {start}")
    model.train()
    bar = tqdm(total=total_steps, initial=start, desc=f"{trained.kind} TP={ctx.tp_degree}", disable=not ctx.is_main or args.disable_tqdm, file=sys.stderr)
    for step in range(start, total_steps):
        paddle.seed(args.seed * 100003 + step)  # dropout depends on the step only: exact resume
        batches = [objective.collate([train_set[i] for i in indices], pad_token_id) for indices in plan.micro_batches(step)]
        loss, norm, lr = train_step(model, optimizer, named, batches, args, scaler, objective)
        schedule.step()
        extra = objective.step_metrics()
        record = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": norm, **extra}
        history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        if (step + 1) % max(1, args.logging_steps) == 0 or step == start:
            log(f"step {step + 1}/{total_steps} loss {record['loss']:.6f} lr {lr:.3e} grad_norm {norm:.4f}" + "".join(f" {k} {v:.4f}" for k, v in extra.items()))
        if eval_set and args.eval_steps and (step + 1) % args.eval_steps == 0:
            result = objective.evaluate(model, eval_set, args.per_device_eval_batch_size, pad_token_id)
            eval_history.append({"step": step + 1, **result})
            log(f"step {step + 1} {objective.describe(result)}")
        if args.save_steps and (step + 1) % args.save_steps == 0:
            state = {"train_history": history, "eval_history": eval_history, "seed": args.seed}
            path = save_training_checkpoint(trained, optimizer, args.output_dir, step + 1, state, args.save_total_limit)
            log(f"saved {path}")
    bar.close()
    _save_final(trained, args.output_dir)
    if trained.kind == "lora" and args.merge_weights:
        from ..lora.model import merge_lora

        save_checkpoint(merge_lora(model), os.path.join(args.output_dir, "merged_model"), trained.config, trained.tokenizer_dir)
    first, last = (history[0]["loss"], history[-1]["loss"]) if history else (None, None)
    log(f"done: {len(history)} steps, loss {first} -> {last}; model in {args.output_dir}")
    state_bytes = optimizer_state_bytes_per_rank(optimizer)
    log(f"optimizer state per rank: {state_bytes} bytes (sharding degree {ctx.sharding_degree})")
    return {"train_history": history, "eval_history": eval_history, "total_steps": total_steps, "optimizer_state_bytes_per_rank": state_bytes}
