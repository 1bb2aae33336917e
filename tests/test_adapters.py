"""Issue 15: one adapter interface (full, LoRA, prefix behave alike through it), and a model built
for the parallel context it is given (never silently for another)."""

import numpy as np
import paddle
import pytest

from paddlebloom import runtime
from paddlebloom.adapter import FullTuning, adapter_of
from paddlebloom.checkpoint import load_into
from paddlebloom.config import BloomConfig
from paddlebloom.lora.config import LoRAConfig
from paddlebloom.lora.model import LoRA
from paddlebloom.model import BloomForCausalLM, alibi_slopes
from paddlebloom.parallel.layers import split_axis
from paddlebloom.prefix.config import PrefixConfig
from paddlebloom.prefix.model import Prefix
from paddlebloom.runtime import ParallelContext
from paddlebloom.weights import tp_axis

ALL_LINEARS = LoRAConfig.parse_targets("qkv,dense,dense_h_to_4h,dense_4h_to_h")
ADAPTERS = {
    "full": lambda tokenizer_dir: FullTuning(tokenizer_dir),
    "lora": lambda _: LoRA(LoRAConfig(r=4, lora_dropout=0.0, target_modules=ALL_LINEARS)),
    "prefix": lambda _: Prefix(
        PrefixConfig(num_prefix_tokens=3, prefix_projection=True, prefix_projection_hidden_size=16)
    ),
}


def base_model(directory, parallel=None):
    model = BloomForCausalLM(BloomConfig.load(directory), parallel=parallel)
    load_into(model, directory)
    return model


def logits(model, ids):
    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(ids)).logits.numpy()


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_every_adapter_saves_loads_merges_and_switches_off_through_one_interface(kind, tiny_dir, tmp_path):
    ids = np.random.RandomState(0).randint(4, 200, size=(2, 7))
    plain = logits(base_model(tiny_dir), ids)
    adapter = ADAPTERS[kind](tiny_dir)
    model = adapter.apply(base_model(tiny_dir), seed=1)
    assert adapter_of(model) is adapter and adapter.name == kind
    rng = np.random.RandomState(2)
    for name, p in adapter.trainable_state(model).items():  # trained-looking weights (LoRA's B starts at 0)
        p.set_value(p.numpy() + rng.normal(0, 0.05, p.shape).astype("float32"))
    tuned = logits(model, ids)
    assert np.abs(tuned - plain).max() > 1e-3  # the adapter matters

    adapter.save(model, str(tmp_path / "saved"))
    again = adapter.apply(base_model(tiny_dir), seed=3)
    adapter.load_weights(again, str(tmp_path / "saved"))
    np.testing.assert_allclose(logits(again, ids), tuned, atol=1e-5)

    if adapter.frozen_base:  # switched off, the model is its base; switched back on, the adapted model
        with adapter.disabled(again):
            np.testing.assert_allclose(logits(again, ids), plain, atol=1e-5)
        np.testing.assert_allclose(logits(again, ids), tuned, atol=1e-5)
    else:
        with pytest.raises(ValueError, match="no adapter to disable"):
            with adapter.disabled(again):
                pass

    merged, alongside = adapter.merge(again)
    assert type(merged) is BloomForCausalLM and adapter_of(merged).name == "full"
    assert (alongside is not None) == (kind == "prefix")  # a prefix cannot be folded into weights
    step_model, prefix_kv = adapter_of(model).step_parts(model)
    assert type(step_model) is BloomForCausalLM and (prefix_kv is not None) == (kind == "prefix")
    if kind != "prefix":
        np.testing.assert_allclose(logits(merged, ids), tuned, atol=1e-4)


def test_a_model_is_built_for_the_parallel_context_it_is_given(tiny_dir, monkeypatch):
    config = BloomConfig.load(tiny_dir)
    one = BloomForCausalLM(config)
    rank1 = BloomForCausalLM(
        config, parallel=ParallelContext(tp_degree=2, tp_rank=1)
    )  # shapes only: no collective runs
    heads = config.n_head // 2
    assert rank1.bloom.h[0].self_attention.local_heads == heads
    np.testing.assert_allclose(rank1.bloom.alibi_slopes.numpy(), alibi_slopes(config.n_head)[heads:], rtol=1e-6)
    for (name, p1), (_, p2) in zip(one.named_parameters(), rank1.named_parameters()):
        axis = split_axis(p2)
        assert axis == tp_axis(name, len(p2.shape))  # live parameters split as checkpoint files are
        assert list(p2.shape) == [n // 2 if i == axis else n for i, n in enumerate(p1.shape)]

    # LoRA starts from the same adapter at every degree: rank 1 holds its slice of TP=1's values.
    lora = LoRAConfig(r=4, target_modules=ALL_LINEARS)
    whole = dict(LoRA(lora).apply(one, seed=7).named_parameters())
    for name, p in LoRA(lora).apply(rank1, seed=7).named_parameters():
        if name.endswith(("lora_A", "lora_B")):
            axis = split_axis(p)
            want = whole[name].numpy() if axis is None else np.split(whole[name].numpy(), 2, axis=axis)[1]
            np.testing.assert_array_equal(p.numpy(), want)

    # Once init_parallel has placed this process among several ranks, a model built without a
    # context is refused instead of silently getting TP=1 shapes.
    monkeypatch.setattr(runtime, "_CONTEXT", ParallelContext(tp_degree=2, tp_rank=0))
    with pytest.raises(ValueError, match="parallel="):
        BloomForCausalLM(config)
