"""Issue 13: generation metrics during fine-tuning: --min_tgt_length holds back EOS, --do_generation
reports PaddleNLP's ROUGE and answers with the prefix as trained so far."""

import json

import numpy as np
from finetune_helpers import TP_MODES, finetune

from conftest import shared_file


def test_min_new_tokens_holds_back_eos():
    from paddlebloom.engine.decoder import Sequence, StepEngine
    from paddlebloom.generation import GenerationConfig

    logits = np.zeros(10, dtype=np.float32)
    logits[2], logits[7] = 5.0, 1.0  # EOS (2) is the greedy choice
    seq = Sequence([5], GenerationConfig(max_new_tokens=4, min_new_tokens=2, eos_token_id=2))
    engine = object.__new__(StepEngine)  # choose() needs no model
    assert [engine.choose(seq, logits) for _ in range(3)] == [7, 7, None] and seq.finish_reason == "stop"


def test_do_generation_reports_paddlenlp_rouge_and_keeps_min_tgt_length(tiny_dir, tmp_path):
    from paddlenlp.metrics import Rouge1, Rouge2, RougeL

    dev = tmp_path / "dev.jsonl"
    dev.write_text(
        "".join(open(shared_file("instruct", "belle_dev_1k.jsonl"), encoding="utf-8").readlines()[:6]), encoding="utf-8"
    )
    metrics = finetune(
        tiny_dir,
        tmp_path / "gen",
        "--max_steps",
        "1",
        "--do_eval",
        "--validation_file",
        str(dev),
        "--do_generation",
        "--tgt_length",
        "8",
        "--min_tgt_length",
        "5",
        "--per_device_eval_batch_size",
        "4",
    )
    rows = [json.loads(line) for line in open(tmp_path / "gen" / "eval_generations.jsonl", encoding="utf-8")]
    assert len(rows) == 6 and all(5 <= r["new_tokens"] <= 8 for r in rows)
    preds, refs = [r["prediction"] for r in rows], [r["reference"] for r in rows]
    rouge_l = RougeL()
    for p, r in zip(preds, refs):
        rouge_l.add_inst(p, [r])
    final = metrics["final_eval"]  # the reference implementation: paddlenlp.metrics on the same strings
    assert (
        abs(final["eval_rouge1"] - Rouge1().score(preds, refs)) < 1e-12
        and abs(final["eval_rouge2"] - Rouge2().score(preds, refs)) < 1e-12
    )
    assert abs(final["eval_rougel"] - rouge_l.score()) < 1e-12 and "eval_loss" in final
    from paddlebloom.evaluation.text_overlap import overlap_scores

    pairs = [("今天天气很好", "今天天气不错"), ("abcab", "abcabc"), ("", "x"), ("the cat sat", "a cat sat down")]
    ours = overlap_scores([p for p, _ in pairs], [r for _, r in pairs])
    rouge_l = RougeL()
    for p, r in pairs:
        rouge_l.add_inst(p, [r])
    assert np.allclose(
        [ours["rouge1"], ours["rouge2"], ours["rougel"]],
        [Rouge1().score(*zip(*pairs)), Rouge2().score(*zip(*pairs)), rouge_l.score()],
    )


def test_do_generation_answers_with_the_prefix_as_trained_so_far(trained_tiny, tmp_path):
    from paddlebloom.data.dataset import load_examples
    from paddlebloom.data.templates import TEMPLATES
    from paddlebloom.generation import GenerationConfig, generate_ids
    from paddlebloom.loading import load_model
    from paddlebloom.training.generation_eval import last_answer

    dev = tmp_path / "dev.jsonl"
    dev.write_text(
        "".join(open(shared_file("instruct", "belle_dev_1k.jsonl"), encoding="utf-8").readlines()[:3]), encoding="utf-8"
    )
    # evaluations after steps 1 and 2: the second must not answer with the prefix of the first
    finetune(
        trained_tiny,
        tmp_path / "p",
        "--max_steps",
        "2",
        "--eval_steps",
        "1",
        "--validation_file",
        str(dev),
        "--do_generation",
        "--tgt_length",
        "8",
        "--learning_rate",
        "0.3",
        *TP_MODES["prefix"],
    )
    model, tok, _ = load_model(trained_tiny, prefix_path=str(tmp_path / "p"))
    examples = load_examples([str(dev)], tok, TEMPLATES["belle"], 48, 8, show_progress=False)
    prompts = [last_answer(ids, labels, tok.eos_token_id)[0] for ids, labels in examples]
    want = [tok.decode(a) for a in generate_ids(model, prompts, GenerationConfig(max_new_tokens=8))]
    assert [
        json.loads(line)["prediction"] for line in open(tmp_path / "p" / "eval_generations.jsonl", encoding="utf-8")
    ] == want
