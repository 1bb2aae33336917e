"""Turn bench/results/*.json into BENCHMARKS.md (ratios against the peer, MFU, memory)."""

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
SHAPE_NAMES = {
    "a": "H512 / 8 layers / vocab 32000, 4 x 256 tokens",
    "b": "bloom-560m shape (H1024 / 24 layers / vocab 250880), 1 x 512 tokens",
}


def training_section(data: dict) -> str:
    m = data["machine"]
    lines = [
        "## Training speed (fp32, CPU)",
        "",
        f"Machine: {m['cores']} cores; measured fp32 matmul peak 2048²: paddle {m['paddle_fp32_gflops']:.0f} GFLOP/s, "
        f"torch {m['torch_fp32_gflops']:.0f} GFLOP/s. MFU = tokens/s x training FLOPs per token / the higher of the "
        "two.",
        "",
        "| shape | method | paddlebloom tok/s | HF+peft tok/s | ratio | paddlebloom MFU | HF MFU | paddlebloom peak "
        "RSS | HF peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = {(r["shape"], r["method"], r["system"]): r for r in data["rows"]}
    for shape in ("a", "b"):
        for method in ("full", "lora"):
            ours, peer = rows.get((shape, method, "paddlebloom")), rows.get((shape, method, "hf+peft"))
            if not ours or not peer:
                continue
            lines.append(
                f"| {shape} | {method} | {ours['tokens_per_s']:.1f} | {peer['tokens_per_s']:.1f} | "
                f"**{ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x** | "
                f"{100 * ours['mfu']:.0f}% | {100 * peer['mfu']:.0f}% | {ours['peak_rss_mb']:.0f} MB | "
                f"{peer['peak_rss_mb']:.0f} MB |"
            )
    lines += [
        "",
        "Shapes: " + "; ".join(f"({k}) {v}" for k, v in SHAPE_NAMES.items()) + ".",
        "Goals (issue 7): LoRA >= 1.3x, full >= 1.5x, MFU >= 50% on shape (a).",
    ]
    if data.get("recompute"):
        lines += [
            "",
            "Recompute on shape (b), full fine-tuning, paddlebloom:",
            "",
            "| recompute | peak RSS | tok/s |",
            "|---|---|---|",
        ]
        lines += [
            f"| {'on' if r['recompute'] else 'off'} | {r['peak_rss_mb']:.0f} MB | {r['tokens_per_s']:.1f} |"
            for r in data["recompute"]
        ]
    return "\n".join(lines)


def _machine_line(m: dict) -> str:
    """The machine facts measured in the same run as the numbers."""
    flags = m.get("flags") or {}
    have = ", ".join(k for k, v in flags.items() if v) or "unknown"
    lacks = ", ".join(k for k, v in flags.items() if not v)
    moved = (
        f" (before the runs {m['bandwidth_before_gbs']:.1f}, after {m['bandwidth_after_gbs']:.1f})"
        if "bandwidth_after_gbs" in m
        else ""
    )
    peak = f"{m['matmul_peak_gflops']:.0f} GFLOP/s" if m.get("matmul_peak_gflops") else "not measured"
    return (
        f"Machine, measured in this run: {m.get('cpu', 'unknown CPU')}, {m['cores']} cores; flags {have}"
        + (f" (no {lacks})" if lacks else "")
        + "; "
        f"memory read bandwidth **{m['bandwidth_gbs']:.1f} GB/s** ({m.get('bandwidth_method', 'constant')}){moved}; "
        f"fp32 matmul peak {peak}; "
        f"load average {m['load_before']:.2f} before, {m['load_after']:.2f} after."
    )


def generation_section(data: dict) -> str:
    m, n = data["machine"], data["params"]
    bw = m["bandwidth_gbs"]
    lines = [
        "## Decoding speed (greedy, bloom-560m shape, CPU)",
        "",
        f"{n / 1e6:.0f}M parameters (random weights, one checkpoint for every system), "
        f"{data.get('prompt_tokens', 32)}-token prompts, "
        f"{data['new_tokens']} new tokens per row (EOS off), {data['threads']} math thread(s) per system, median of "
        f"{data.get('rounds', 1)} fresh-process run(s).",
        "",
        _machine_line(m),
        "",
        "Each decode step streams every weight once, so tokens/s per row cannot exceed bandwidth / (bytes per weight "
        "x parameters): "
        f"here {bw * 1e9 / (4 * n):.1f} (fp32), {bw * 1e9 / (2 * n):.1f} (bf16), {bw * 1e9 / n:.1f} (int8) tok/s at "
        "batch 1. "
        f"'Share' is the weight-read rate a system reached as a fraction of that limit.",
        "",
        "| system | batch | tok/s | bytes/weight | weight reads GB/s | share of bandwidth | MFU | peak RSS | first "
        "tokens | check |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        if not r.get("tokens_per_s"):
            lines.append(
                f"| {r['system']} | {r['batch']} | {r.get('error') or 'failed'} | {r.get('bytes_per_weight', '-')} | - "
                "| - | - | - | - | - |"
            )
            continue
        share = r.get("bandwidth_share", r.get("bandwidth_use"))
        check = r.get("warning") or (
            "same as ours fp32"
            if r.get("matches_ours_fp32")
            else ("differs (not fp32)" if r.get("matches_ours_fp32") is False else "reference")
        )
        busy = f" (other processes: {r['foreign_cores']:.1f} cores)" if r.get("foreign_cores", 0) > 0.3 else ""
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        lines.append(
            f"| {r['system']}{busy} | {r['batch']} | {r['tokens_per_s']:.2f} | {r.get('bytes_per_weight', 4)} | "
            f"{r['weight_read_gbs']:.1f} | {100 * share:.0f}% | {mfu} | "
            f"{r['peak_rss_mb']:.0f} MB | {' '.join(str(t) for t in r['first_tokens'][:4])} | {check} |"
        )
    if data.get("ratios"):
        lines += ["", "| comparison | batch | ratio | goal | ours (fastest row) | peer |", "|---|---|---|---|---|---|"]
        for q in data["ratios"]:
            # 3 decimals when 2 would round a miss up to the goal (0.997 is not 1.00)
            digits = 3 if q.get("met") is False and round(q["ratio"], 2) >= q["goal"] else 2
            ratio = f"**{q['ratio']:.{digits}f}x**" if q["ratio"] is not None else "n/a (a side did not run)"
            goal = (
                f">= {q['goal']}x {'met' if q['met'] else 'NOT met'}"
                if q.get("goal") and q["ratio"] is not None
                else (f">= {q['goal']}x" if q.get("goal") else "-")
            )
            lines.append(f"| {q['name']} | {q['batch']} | {ratio} | {goal} | {q['ours'] or '-'} | {q['peer'] or '-'} |")
    lines += [
        "",
        "Peers: HF transformers `generate` on torch CPU (fp32; bf16 = weights cast at load), CTranslate2 `Generator` "
        "(converted with `ct2-transformers-converter`, inter_threads=1; on CPU its int8 runs as int8_float32). "
        "'check' compares each system's first greedy tokens (every row) with ours fp32; on this random model they are "
        "a weak check "
        "(the model repeats one token), so 'same' rules out a wrong model, not small numeric differences. "
        "bench/run_generate_bench.py.",
    ]
    return "\n".join(lines)


def serving_section(data: dict, baseline: dict = None) -> str:
    m, model = data["machine"], data["model"]
    lengths = data["max_tokens"] if isinstance(data["max_tokens"], list) else [data["max_tokens"]]
    lines = [
        "## Serving (deploy/serve.py, greedy completions over loopback HTTP)",
        "",
        f"Random BLOOM H{model['hidden']} / {model['layers']} layers / vocab {model['vocab']}, answers of "
        f"{' and '.join(map(str, lengths))} new tokens, "
        f"{data['chunk_tokens']} token(s) per streamed event; {m['cores']} cores ({m['cpu']}), load average "
        f"{m['load_before']:.1f} before, {m['load_after']:.1f} after.",
        "",
        "| server | answer tokens | clients | requests | requests/s | tokens/s | mean latency | latency per token | "
        "mean batch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in ("batched", "sequential"):
        for r in data[mode]:
            per_token = f"{r['mean_latency_per_token_ms']:.1f} ms" if r.get("mean_latency_per_token_ms") else "-"
            busy = f" (other processes: {r['foreign_cores']:.1f} cores)" if r.get("foreign_cores", 0) > 0.3 else ""
            latency = f"{r['mean_latency_s']:.2f} s" if r.get("mean_latency_s") is not None else "-"
            lines.append(
                f"| {mode} (max batch {r['max_batch_size']}){busy} | {r.get('max_tokens', lengths[0])} | "
                f"{r['clients']} | {r['requests']} | {r['requests_per_s']:.1f} | "
                f"{r['tokens_per_s']:.0f} | {latency} | {per_token} | {r['mean_batch']:.1f} |"
            )
    lines += [
        "",
        f"Dynamic batching serves **{data['batching_speedup_at_max_clients']:.1f}x** the tokens/s of "
        "one-request-at-a-time serving "
        f"at {max(r['clients'] for r in data['batched'] if r.get('max_tokens', lengths[0]) == lengths[0])} clients "
        f"({lengths[0]}-token answers).",
    ]
    for q in data.get("long_vs_short", []):
        lines.append(
            f"{q['max_tokens']}-token answers at {q['clients']} clients: **{q['ratio']:.2f}x** the tokens/s of "
            f"{lengths[0]}-token answers" + (" (goal: >= 1.0x, no slower per token)." if q["clients"] == 16 else ".")
        )
    if baseline:
        then = {(r.get("max_tokens"), r["clients"]): r for r in baseline["batched"]}
        for r in data["batched"]:
            old = then.get((r.get("max_tokens"), r["clients"]))
            if old and r.get("max_tokens") != lengths[0]:
                same = (
                    "same CPU"
                    if baseline["machine"]["cpu"] == m["cpu"]
                    else f"measured on {baseline['machine']['cpu']}"
                )
                lines.append(
                    f"{r['max_tokens']}-token answers at {r['clients']} clients: "
                    f"**{r['tokens_per_s'] / old['tokens_per_s']:.2f}x** the tokens/s of "
                    f"the baseline ({old['tokens_per_s']:.0f} tok/s at {baseline.get('commit', '?')}, {same})"
                    + (" (goal: >= 3x)." if r["clients"] == 16 else ".")
                )
    lines.append("bench/run_serve_bench.py.")
    return "\n".join(lines)


def main() -> None:
    sections = [
        "# Benchmarks",
        "",
        "Written by `make bench` (bench/write_report.py) from bench/results/; numbers are from the last run on this "
        "machine.",
    ]
    path = os.path.join(RESULTS, "train.json")
    if os.path.isfile(path):
        sections += ["", training_section(json.load(open(path)))]
    path = os.path.join(RESULTS, "generate.json")
    if os.path.isfile(path):
        sections += ["", generation_section(json.load(open(path)))]
    path, base = os.path.join(RESULTS, "serve.json"), os.path.join(RESULTS, "serve_baseline.json")
    if os.path.isfile(path):
        sections += [
            "",
            serving_section(json.load(open(path)), json.load(open(base)) if os.path.isfile(base) else None),
        ]
    for name in sorted(os.listdir(RESULTS)) if os.path.isdir(RESULTS) else []:
        if name.endswith(".md"):  # sections other benchmarks write themselves
            sections += ["", open(os.path.join(RESULTS, name)).read().strip()]
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
        f.write("\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
