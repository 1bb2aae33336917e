"""The fine-tuning run: data → model (+ adapter) → optimizer steps → checkpoints → report.

Everything that can be wrong with the input (flags, data, model directory, parallel layout) is
checked before the output directory is touched, so a failed start leaves nothing behind.
"""

import math
import os
import shutil
import sys

import paddle
from tqdm import tqdm

from ..adapter import Adapter, FullTuning, adapter_of
from ..checkpoint import load_into
from ..config import BloomConfig
from ..data.dataset import BatchPlan
from ..data.templates import get_template
from ..loading import resolve_model_dir
from ..lora.config import LoRAConfig
from ..lora.model import LoRA
from ..model import BloomForCausalLM
from ..prefix.config import PrefixConfig
from ..prefix.model import Prefix
from ..runtime import ParallelContext, init_parallel, parallel_context, quiet, use_all_cores
from ..tokenizer import BloomTokenizer
from .generation_eval import GenerationEval
from .objective import TokenObjective, sum_over_data_parallel
from .optim import (
    autocast,
    build_optimizer,
    check_precision,
    clip_gradients,
    grad_scaler,
    sum_gradients_over_data_parallel,
)
from .report import plot_loss_curve, write_metrics
from .sharding import optimizer_state_bytes_per_rank, resolve_sharding_degree
from .state import newest_checkpoint, remove_stale_temporaries, restore_training_checkpoint, save_training_checkpoint


def log(message: str) -> None:
    if parallel_context().is_main:
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()


def choose_adapter(args, model_dir: str):
    """What this run trains, from its flags: (the adapter, the adapter directory it continues or None)."""
    if args.lora:
        if args.lora_path:
            return LoRA.from_directory(args.lora_path), args.lora_path
        return LoRA(
            LoRAConfig(
                r=args.r,
                lora_alpha=args.lora_alpha,
                lora_dropout=args.lora_dropout,
                target_modules=LoRAConfig.parse_targets(args.lora_target_modules),
                merge_weights=args.merge_weights,
                base_model_name_or_path=args.model_name_or_path,
            )
        ), None
    if args.prefix:
        if args.prefix_path:
            return Prefix.from_directory(args.prefix_path), args.prefix_path
        return Prefix(
            PrefixConfig(
                num_prefix_tokens=args.num_prefix_tokens,
                prefix_projection=args.prefix_projection,
                prefix_projection_hidden_size=args.prefix_projection_hidden_size,
                base_model_name_or_path=args.model_name_or_path,
            )
        ), None
    return FullTuning(tokenizer_dir=model_dir, shards=args.save_shards), None


def build_model(args, config: BloomConfig, model_dir: str, parallel: ParallelContext):
    """The model for `parallel` with what this run trains attached (`adapter_of(model)` names it)."""
    model = BloomForCausalLM(config, parallel=parallel)
    load_into(model, model_dir)
    adapter, continued = choose_adapter(args, model_dir)
    model = adapter.apply(model, seed=args.seed)
    if continued:
        adapter.load_weights(model, continued)
    model.set_recompute(args.recompute)
    return model


def train_step(model, optimizer, named, batches, args, scaler=None, objective=None):
    """One optimizer step over micro-batches (numpy ids, mask, labels); returns (loss, grad norm, lr).

    Every scored token of the step weighs the same, whichever micro-batch or data-parallel rank
    it is in: accumulation then equals one big batch exactly (an objective's `units` say what a
    micro-batch weighs: tokens here, preference pairs for DPO).
    """
    objective = objective or TokenObjective()
    step_units = sum_over_data_parallel(sum(objective.units(batch) for batch in batches))
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
    return sum_over_data_parallel(loss_sum) / max(step_units, 1.0), norm, lr


def _save_final(adapter: Adapter, model, output_dir: str) -> None:
    """Write the final model into output_dir beside its checkpoints, file by file atomically."""
    staging = os.path.join(output_dir, ".final.tmp-run")
    adapter.save(model, staging)
    if model.parallel.is_main:
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
        shutil.rmtree(staging, ignore_errors=True)


def run(args, objective=None) -> dict:
    if objective is None and getattr(args, "do_generation", False):
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

    def load(files):
        return objective.load(files, tokenizer, template, args, show)

    train_set = load(args.train_file) if args.do_train else []
    eval_set = load(args.validation_file) if args.validation_file else []

    paddle.seed(args.seed)
    model = build_model(args, config, model_dir, ctx)
    kind = adapter_of(model).name
    objective.attach(model, args, config, model_dir)
    metrics = {
        "kind": kind,
        "tensor_parallel_degree": ctx.tp_degree,
        "train_history": [],
        "eval_history": [],
        "data_parallel_degree": ctx.dp_degree,
        "sharding_parallel_degree": ctx.sharding_degree,
    }
    if args.do_train:
        metrics.update(train(args, model, train_set, eval_set, tokenizer.pad_token_id, objective))
        if args.lora and args.merge_weights:  # LoRA's flag: also the base model with the adapter folded in
            adapter_of(model).save_merged(model, os.path.join(args.output_dir, "merged_model"), model_dir)
    if args.do_eval:
        metrics["final_eval"] = objective.evaluate(
            model, eval_set, args.per_device_eval_batch_size, tokenizer.pad_token_id
        )
        log(objective.describe(metrics["final_eval"]))
    if ctx.is_main:
        os.makedirs(args.output_dir, exist_ok=True)
        write_metrics(args.output_dir, metrics)
        if metrics["train_history"]:
            plot_loss_curve(
                args.output_dir,
                metrics["train_history"],
                metrics["eval_history"],
                f"{kind} {objective.title}, TP={ctx.tp_degree}",
                objective.loss_label,
            )
            objective.report(args.output_dir, metrics, f"{kind} {objective.title}, TP={ctx.tp_degree}")
    return metrics


def train(args, model, train_set, eval_set, pad_token_id: int, objective=None) -> dict:
    """The optimizer steps; checkpoints and the final model are written by the model's adapter."""
    objective = objective or TokenObjective()
    ctx, adapter = model.parallel, adapter_of(model)
    plan = BatchPlan(
        len(train_set),
        args.per_device_train_batch_size,
        args.gradient_accumulation_steps,
        ctx.data_degree,
        ctx.data_rank,
        args.seed,
    )
    total_steps = (
        args.max_steps if args.max_steps > 0 else max(1, math.ceil(args.num_train_epochs * plan.steps_per_epoch))
    )
    optimizer, schedule, named = build_optimizer(model, args, total_steps)
    scaler = grad_scaler(args)
    os.makedirs(args.output_dir, exist_ok=True)
    remove_stale_temporaries(args.output_dir)
    resume = args.resume_from_checkpoint or (None if args.overwrite_output_dir else newest_checkpoint(args.output_dir))
    history, eval_history, start = [], [], 0
    if resume:
        state = restore_training_checkpoint(model, optimizer, resume)
        start, history, eval_history = state["global_step"], state["train_history"], state["eval_history"]
        schedule.step(start)
        log(f"resumed from {resume} at step {start}")
    model.train()
    bar = tqdm(
        total=total_steps,
        initial=start,
        desc=f"{adapter.name} TP={ctx.tp_degree}",
        disable=not ctx.is_main or args.disable_tqdm,
        file=sys.stderr,
    )
    for step in range(start, total_steps):
        paddle.seed(args.seed * 100003 + step)  # dropout depends on the step only: exact resume
        batches = [
            objective.collate([train_set[i] for i in indices], pad_token_id) for indices in plan.micro_batches(step)
        ]
        loss, norm, lr = train_step(model, optimizer, named, batches, args, scaler, objective)
        schedule.step()
        extra = objective.step_metrics()
        record = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": norm, **extra}
        history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        if (step + 1) % max(1, args.logging_steps) == 0 or step == start:
            log(
                f"step {step + 1}/{total_steps} loss {record['loss']:.6f} lr {lr:.3e} grad_norm {norm:.4f}"
                + "".join(f" {k} {v:.4f}" for k, v in extra.items())
            )
        if eval_set and args.eval_steps and (step + 1) % args.eval_steps == 0:
            result = objective.evaluate(model, eval_set, args.per_device_eval_batch_size, pad_token_id)
            eval_history.append({"step": step + 1, **result})
            log(f"step {step + 1} {objective.describe(result)}")
        if args.save_steps and (step + 1) % args.save_steps == 0:
            state = {"train_history": history, "eval_history": eval_history, "seed": args.seed}
            path = save_training_checkpoint(model, optimizer, args.output_dir, step + 1, state, args.save_total_limit)
            log(f"saved {path}")
    bar.close()
    _save_final(adapter, model, args.output_dir)
    first, last = (history[0]["loss"], history[-1]["loss"]) if history else (None, None)
    log(f"done: {len(history)} steps, loss {first} -> {last}; model in {args.output_dir}")
    state_bytes = optimizer_state_bytes_per_rank(optimizer)
    log(f"optimizer state per rank: {state_bytes} bytes (sharding degree {ctx.sharding_degree})")
    return {
        "train_history": history,
        "eval_history": eval_history,
        "total_steps": total_steps,
        "optimizer_state_bytes_per_rank": state_bytes,
    }
