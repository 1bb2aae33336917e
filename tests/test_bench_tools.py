"""The decoding/serving benchmarks' pure helpers: ratios, token checks, failed rows, the report.

No measurement runs here (those take minutes and both venvs); these check the arithmetic and that
a failed system becomes a row instead of ending the bench or the report.
"""

from bench import machine
from bench.run_generate_bench import SYSTEMS, check_tokens, ratios, summarise
from bench.write_report import generation_section, serving_section

FACTS = {
    "cpu": "Test CPU",
    "cores": 2,
    "flags": {"avx2": True, "avx512_bf16": False},
    "bandwidth_gbs": 20.0,
    "bandwidth_method": "test",
    "matmul_peak_gflops": 100.0,
    "load_before": 0.5,
    "load_after": 0.7,
}
N = 500_000_000


def run(tps, first=(5, 5, 5)):
    return {
        "tokens_per_s": tps,
        "peak_rss_mb": 1000.0,
        "first_row": list(first),
        "first_tokens_all": [list(first)],
        "foreign_cores": 0.0,
        "load1_before": 0.1,
    }


def test_summarise_counts_bytes_per_weight_and_bandwidth_share():
    row = summarise("ct2-int8", 1, [run(10.0), run(12.0), run(11.0)], [], N, 2 * N, FACTS)
    assert row["tokens_per_s"] == 11.0  # the median
    assert row["bytes_per_weight"] == 1
    assert abs(row["weight_read_gbs"] - 5.5) < 1e-9  # 11 tok/s x 1 byte x 0.5e9 weights
    assert abs(row["bandwidth_share"] - 5.5 / 20.0) < 1e-9
    # batch 8 reads each weight once per step, not once per row
    assert abs(summarise("ours-static", 8, [run(80.0)], [], N, 2 * N, FACTS)["weight_read_gbs"] - 20.0) < 1e-9


def test_failed_system_is_a_row_with_its_reason():
    row = summarise("ours-int8", 1, [], ["failed: NameError: x"], N, 2 * N, FACTS)
    assert row["tokens_per_s"] is None and row["error"] == "failed: NameError: x"
    text = generation_section(
        {"machine": FACTS, "params": N, "new_tokens": 64, "threads": 2, "rows": [row], "ratios": ratios([row], [1])}
    )
    assert "failed: NameError: x" in text and "n/a" in text


def test_ratios_take_the_fastest_of_ours_and_state_goals():
    rows = [
        summarise(k, 1, [run(t)], [], N, 2 * N, FACTS)
        for k, t in (
            ("ours-static", 10.0),
            ("ours-int8", 36.0),
            ("ct2-int8", 20.0),
            ("ct2-fp32", 12.5),
            ("hf-bf16", 18.0),
        )
    ]
    by = {(q["name"], q["batch"]): q for q in ratios(rows, [1])}
    q = by["fastest ours / CTranslate2 int8", 1]
    assert abs(q["ratio"] - 1.8) < 1e-9 and q["goal"] == 1.5 and q["met"] and q["ours"] == SYSTEMS["ours-int8"][0]
    q = by["ours fp32 static / CTranslate2 float32", 1]
    assert abs(q["ratio"] - 0.8) < 1e-9 and q["met"] is False
    assert by["fastest ours / HF torch fp32", 1]["ratio"] is None  # HF fp32 did not run


def test_fp32_peers_with_other_tokens_get_a_warning():
    rows = [
        summarise("ours-static", 1, [run(10.0, (1, 2, 3))], [], N, 2 * N, FACTS),
        summarise("hf-fp32", 1, [run(8.0, (1, 2, 3))], [], N, 2 * N, FACTS),
        summarise("ct2-fp32", 1, [run(9.0, (1, 2, 4))], [], N, 2 * N, FACTS),
        summarise("ct2-int8", 1, [run(20.0, (1, 2, 4))], [], N, 2 * N, FACTS),
    ]
    check_tokens(rows)
    assert rows[1]["matches_ours_fp32"] and "warning" not in rows[1]
    assert "differ" in rows[2]["warning"]
    assert rows[3]["matches_ours_fp32"] is False and "warning" not in rows[3]  # int8 may round differently


def test_cpu_facts_and_busy_counter():
    facts = machine.cpu_facts()
    assert set(facts["flags"]) == set(machine.FLAGS) and facts["cores"] >= 1
    assert machine.cpu_busy_seconds() > 0


def test_serving_section_prints_long_vs_short_and_baseline_ratios():
    def level(n, c, tps):
        return {
            "max_batch_size": 16,
            "max_tokens": n,
            "clients": c,
            "requests": 10,
            "requests_per_s": 1.0,
            "tokens_per_s": tps,
            "mean_latency_s": 1.0,
            "mean_latency_per_token_ms": 5.0,
            "mean_batch": 4.0,
        }

    data = {
        "machine": {"cores": 2, "cpu": "Test CPU", "load_before": 0.1, "load_after": 0.2},
        "model": {"hidden": 256, "layers": 4, "vocab": 8000},
        "max_tokens": [32, 256],
        "chunk_tokens": 8,
        "batched": [level(32, 16, 500.0), level(256, 16, 600.0)],
        "sequential": [{**level(32, 16, 100.0), "max_batch_size": 1}],
        "batching_speedup_at_max_clients": 5.0,
        "long_vs_short": [{"max_tokens": 256, "clients": 16, "ratio": 1.2}],
    }
    baseline = {**data, "batched": [level(32, 16, 500.0), level(256, 16, 200.0)], "commit": "abc"}
    text = serving_section(data, baseline)
    assert "**1.20x** the tokens/s of 32-token answers" in text
    assert "**3.00x** the tokens/s of the baseline" in text and "same CPU" in text
