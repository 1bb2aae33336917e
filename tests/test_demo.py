"""`make demo` end to end: the summary's claims are checked against its own artefacts."""

import json
import os
import subprocess

from conftest import ROOT
from paddlebloom.demo import NEW_INSTRUCTION as TARGET_FAMILY


def test_make_demo_learns_the_new_instruction(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(["make", "demo", f"DEMO_DIR={out}"], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(proc.stdout[-2500:])  # the demo's own summary, visible with -s
    summary = json.load(open(out / "summary.json"))
    first, last = summary["pretrain_loss"]
    assert last < first / 3
    assert summary["lora_loss"][1] < summary["lora_loss"][0]
    ppl = summary["ppl"]
    assert ppl["pretrained"] < ppl["new"] / 10
    # Held-out prompts (inputs never trained on), answered by the exported static model.
    before, after = (
        summary["held_out_exact_match_before_lora"][TARGET_FAMILY],
        summary["held_out_exact_match"][TARGET_FAMILY],
    )
    assert after >= 0.8 and after > before, summary
    with open(summary["artefacts"]["answers"], encoding="utf-8") as f:
        answers = [json.loads(line) for line in f]
    target = [a for a in answers if a["family"] == TARGET_FAMILY]
    assert len(target) >= 20 and sum(a["prediction"].strip() == a["output"] for a in target) / len(target) == after
    # DPO (issue 17): held-out pairs (right answer vs another word of the list) preferred more often
    before_dpo, after_dpo = summary["dpo"]["held_out_preference_accuracy"]
    assert after_dpo >= before_dpo + 0.15 and summary["dpo"]["loss"][1] < summary["dpo"]["loss"][0], summary["dpo"]
    assert os.path.getsize(summary["artefacts"]["dpo_rewards"]) > 1000
    for png in summary["artefacts"]["loss_curves"]:
        assert os.path.getsize(png) > 1000
    assert os.path.exists(os.path.join(summary["artefacts"]["static"], "bloom.json"))
    # Weight-only int8 (issue 12): every greedy answer of the held-out prompts unchanged.
    assert summary["int8_answers_equal_fp32"] == 1.0, summary
    with open(summary["artefacts"]["answers_int8"], encoding="utf-8") as f:
        assert [json.loads(line)["prediction"] for line in f] == [a["prediction"] for a in answers]
