"""Turn bench/results/*.json into BENCHMARKS.md (ratios against the peer, MFU, memory)."""
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
SHAPE_NAMES = {"a": "H512 / 8 layers / vocab 32000, 4 x 256 tokens", "b": "bloom-560m shape (H1024 / 24 layers / vocab 250880), 1 x 512 tokens"}


def training_section(data: dict) -> str:
    m = data["machine"]
    lines = ["## Training speed (fp32, CPU)", "",
             f"Machine: {m['cores']} cores; measured fp32 matmul peak 2048²: paddle {m['paddle_fp32_gflops']:.0f} GFLOP/s, "
             f"torch {m['torch_fp32_gflops']:.0f} GFLOP/s. MFU = tokens/s x training FLOPs per token / the higher of the two.", "",
             "| shape | method | paddlebloom tok/s | HF+peft tok/s | ratio | paddlebloom MFU | HF MFU | paddlebloom peak RSS | HF peak RSS |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = {(r["shape"], r["method"], r["system"]): r for r in data["rows"]}
    for shape in ("a", "b"):
        for method in ("full", "lora"):
            ours, peer = rows.get((shape, method, "paddlebloom")), rows.get((shape, method, "hf+peft"))
            if not ours or not peer:
                continue
            lines.append(f"| {shape} | {method} | {ours['tokens_per_s']:.1f} | {peer['tokens_per_s']:.1f} | **{ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x** | "
                         f"{100 * ours['mfu']:.0f}% | {100 * peer['mfu']:.0f}% | {ours['peak_rss_mb']:.0f} MB | {peer['peak_rss_mb']:.0f} MB |")
    lines += ["", "Shapes: " + "; ".join(f"({k}) {v}" for k, v in SHAPE_NAMES.items()) + ".",
              "Goals (issue 7): LoRA >= 1.3x, full >= 1.5x, MFU >= 50% on shape (a)."]
    if data.get("recompute"):
        lines += ["", "Recompute on shape (b), full fine-tuning, paddlebloom:", "", "| recompute | peak RSS | tok/s |", "|---|---|---|"]
        lines += [f"| {'on' if r['recompute'] else 'off'} | {r['peak_rss_mb']:.0f} MB | {r['tokens_per_s']:.1f} |" for r in data["recompute"]]
    return "\n".join(lines)


def generation_section(data: dict) -> str:
    m = data["machine"]
    lines = ["## Decoding speed (greedy, bloom-560m shape, fp32, CPU)", "",
             f"{data['params'] / 1e6:.0f}M parameters, {data['new_tokens']} new tokens, {data['threads']} math thread(s) per system; "
             f"memory bandwidth limit {m['bandwidth_gbs']:.0f} GB/s (batch-1 decoding reads every weight once per token), matmul peak {m['matmul_peak_gflops']:.0f} GFLOP/s.", "",
             "| system | batch | tok/s | vs HF | bandwidth use | MFU | peak RSS |", "|---|---|---|---|---|---|---|"]
    hf = {r["batch"]: r["tokens_per_s"] for r in data["rows"] if r["system"].startswith("HF")}
    for r in data["rows"]:
        ratio = f"{r['tokens_per_s'] / hf[r['batch']]:.2f}x" if r["batch"] in hf else "-"
        lines.append(f"| {r['system']} | {r['batch']} | {r['tokens_per_s']:.2f} | {ratio} | {100 * r['bandwidth_use']:.0f}% | {100 * r['mfu']:.1f}% | {r['peak_rss_mb']:.0f} MB |")
    lines += ["", "Goal (issue 5): static deploy >= 3x HF fp32 at batch 1. fp32 batch-1 decoding cannot exceed "
              "bandwidth / (4 bytes x parameters) tokens/s, so 3x needs bf16 or int8 weights."]
    return "\n".join(lines)


def serving_section(data: dict) -> str:
    m, model = data["machine"], data["model"]
    lines = ["## Serving (deploy/serve.py, greedy completions over loopback HTTP)", "",
             f"Random BLOOM H{model['hidden']} / {model['layers']} layers / vocab {model['vocab']}, {data['max_tokens']} new tokens per request, "
             f"chunks of {data['chunk_tokens']} tokens; {m['cores']} cores ({m['cpu']}), load average {m['load_before']:.1f} before, {m['load_after']:.1f} after.", "",
             "| server | clients | requests | requests/s | tokens/s | mean latency | mean batch |", "|---|---|---|---|---|---|---|"]
    for mode in ("batched", "sequential"):
        for r in data[mode]:
            lines.append(f"| {mode} (max batch {r['max_batch_size']}) | {r['clients']} | {r['requests']} | {r['requests_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
                         f"{r['mean_latency_s']:.2f} s | {r['mean_batch']:.1f} |")
    lines += ["", f"Dynamic batching serves **{data['batching_speedup_at_max_clients']:.1f}x** the tokens/s of one-request-at-a-time serving "
              f"at {max(r['clients'] for r in data['batched'])} clients (bench/run_serve_bench.py)."]
    return "\n".join(lines)


def main() -> None:
    sections = ["# Benchmarks", "", "Written by `make bench` (bench/write_report.py) from bench/results/; numbers are from the last run on this machine."]
    path = os.path.join(RESULTS, "train.json")
    if os.path.isfile(path):
        sections += ["", training_section(json.load(open(path)))]
    path = os.path.join(RESULTS, "generate.json")
    if os.path.isfile(path):
        sections += ["", generation_section(json.load(open(path)))]
    path = os.path.join(RESULTS, "serve.json")
    if os.path.isfile(path):
        sections += ["", serving_section(json.load(open(path)))]
    for name in sorted(os.listdir(RESULTS)) if os.path.isdir(RESULTS) else []:
        if name.endswith(".md"):  # sections other benchmarks write themselves
            sections += ["", open(os.path.join(RESULTS, name)).read().strip()]
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
        f.write("\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
