"""GPU checks: kielo's training path gives the stock path's losses and LoRA gradients, and packing isolates examples.

Both paths are the ones `kielo bench` (kielo/bench) times (stock = transformers + peft + bitsandbytes as the anchor
scripts run them; kielo = load_base_model + add_lora + accumulate_gradients), on a small random Llama with
NF4 weights and bf16 compute (Gemma 3 and BLOOM where named); `kielo train` on CUDA for the memory plan and the
preference objectives (DPO, ORPO). Marked ``gpu`` and skipped without CUDA; bench/run_gpu_tests.sh runs them.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from kielo.bench.cases import VARIANTS
from kielo.bench.data import full_examples, instruction_examples, micro_batches
from kielo.bench.models import load, trainable
from kielo.bench.steps import optimizer, step_function

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SHAPE = dict(
    vocab_size=8192,
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=2048,
)
STEPS = 20
DEVICE = torch.device("cuda")


BLOOM_SHAPE = dict(vocab_size=8192, hidden_size=512, n_layer=4, n_head=8)  # ALiBi: packs through a block mask
GEMMA_SHAPE = dict(
    vocab_size=32768,
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=128,
    max_position_embeddings=2048,
    sliding_window=128,
)


def _random_model(tmp_path_factory, name: str, model_cls: str, config_cls: str, shape: dict) -> Path:
    """A seeded random-weight bf16 model of ``shape`` saved to a fresh folder."""
    import transformers

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(name)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**shape))
    model.to(torch.bfloat16).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory) -> Path:
    return _random_model(tmp_path_factory, "gpu-gemma", "Gemma3ForCausalLM", "Gemma3TextConfig", GEMMA_SHAPE)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return _random_model(tmp_path_factory, "gpu-llama", "LlamaForCausalLM", "LlamaConfig", SHAPE)


@pytest.fixture(scope="module")
def bloom_dir(tmp_path_factory) -> Path:
    return _random_model(tmp_path_factory, "gpu-bloom", "BloomForCausalLM", "BloomConfig", BLOOM_SHAPE)


def loaded(path: str, folder: Path):
    """A bench variant's loaded model (kielo.bench.models.Loaded) with LoRA B set to the same small random values
    in both, so that A gets gradients too (B starts at zero, which would leave every A gradient zero at the first
    step)."""
    stack = load(VARIANTS[path], folder, DEVICE)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in trainable(stack.model):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    return stack


def train(path: str, folder: Path, steps: list, mbs: int = 2, vocab: int = SHAPE["vocab_size"]) -> tuple[list[float], torch.Tensor]:
    """Losses of ``len(steps)`` optimizer steps of bench variant ``path`` and the flattened LoRA gradients of the
    first."""
    from kielo.bench.cases import Case

    device = DEVICE
    stack = loaded(path, folder)
    model = stack.model
    params = [p for _, p in trainable(model)]
    # The bench's own step and optimizer for the stack: stock's model loss and AdamW, kielo's resolved path.
    opt, step_fn = optimizer(stack, params, device), step_function(stack, Case("a", "a"))
    losses, first_grads = [], None
    for examples in steps:
        micro = micro_batches(examples, stack.layout, mbs, 512, vocab - 1)
        losses.append(step_fn(model, micro, device))
        if first_grads is None:
            first_grads = torch.cat([p.grad.detach().float().flatten() for p in params])
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, first_grads


@pytest.mark.parametrize("path", ["kielo", "kielo+fp32"])
@pytest.mark.parametrize("data", ["full", "instruction"])
def test_kielo_matches_stock_loss_and_gradients(llama_dir, data, path):
    """kielo train's GPU default for Llama (bf16 stream, Liger, fused head and LoRA) and its fp32 stream
    (stock's arithmetic) against stock."""
    vocab = SHAPE["vocab_size"]
    if data == "full":
        steps = full_examples(STEPS, 2, 512, vocab, seed=3)
    else:  # variable lengths: stock pads micro-batches of 2, kielo packs rows of 512
        steps = instruction_examples(STEPS, 8, 512, vocab, seed=4)
    stock_losses, stock_grads = train("stock", llama_dir, steps)
    kielo_losses, kielo_grads = train(path, llama_dir, steps)
    deltas = [abs(a - b) for a, b in zip(stock_losses, kielo_losses, strict=True)]
    cos = float(torch.nn.functional.cosine_similarity(stock_grads.double(), kielo_grads.double(), dim=0))
    print(
        f"\n{path}, {data}: stock losses {stock_losses[0]:.4f} .. {stock_losses[-1]:.4f}; max |dloss| {max(deltas):.5f} "
        f"over {STEPS} steps; LoRA grad cosine {cos:.6f}"
    )
    assert all(map(math.isfinite, stock_losses + kielo_losses))
    assert max(deltas) <= 0.02, deltas
    assert cos >= 0.999
    assert kielo_grads.abs().sum() > 0


def test_gemma_fast_path_matches_stock(gemma_dir):
    """kielo train's GPU default for Gemma 3 (bf16 stream, Liger kernels, fused loss head) against stock."""
    from kielo.model.precision import liger_installed

    vocab = GEMMA_SHAPE["vocab_size"]
    stack = loaded("kielo", gemma_dir)
    norm = next(p for n, p in stack.model.named_parameters() if n.endswith("input_layernorm.weight"))
    assert norm.dtype == torch.bfloat16, "the Gemma 3 default must train on the bf16 stream"
    assert stack.path.precision.liger == liger_installed()
    del stack
    steps = instruction_examples(STEPS, 8, 512, vocab, seed=6)
    stock_losses, stock_grads = train("stock", gemma_dir, steps, vocab=vocab)
    kielo_losses, kielo_grads = train("kielo", gemma_dir, steps, vocab=vocab)
    deltas = [abs(a - b) for a, b in zip(stock_losses, kielo_losses, strict=True)]
    cos = float(torch.nn.functional.cosine_similarity(stock_grads.double(), kielo_grads.double(), dim=0))
    print(
        f"\ngemma fast path (liger={liger_installed()}): stock losses {stock_losses[0]:.4f} .. {stock_losses[-1]:.4f}; "
        f"max |dloss| {max(deltas):.5f} over {STEPS} steps; LoRA grad cosine {cos:.6f}"
    )
    assert max(deltas) <= 0.02, deltas
    assert cos >= 0.999
    assert kielo_grads.abs().sum() > 0


def _logits(model, batch) -> torch.Tensor:
    from kielo.train.loss import causal_lm
    from kielo.train.packing import model_inputs

    lm = causal_lm(model)
    out = lm.base_model(**model_inputs(model, batch.to(DEVICE)), use_cache=False)
    return lm.get_output_embeddings()(out[0]).float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@torch.no_grad()
@pytest.mark.parametrize("folder", ["llama_dir", "bloom_dir"])
def test_packed_examples_never_attend_to_each_other(request, folder):
    from kielo.data.batches import collate_packed, collate_padded, segment_bounds

    model = loaded("kielo", request.getfixturevalue(folder)).model
    pad = SHAPE["vocab_size"] - 1
    examples = instruction_examples(1, 3, 200, SHAPE["vocab_size"], seed=5)[0]
    packed_batch = collate_packed([examples], pad)
    packed = _logits(model, packed_batch)[0]
    # Control: the same row as one causal sequence (one segment: for BLOOM a plain causal mask), where later
    # examples do see earlier ones.
    leaky_batch = collate_packed([examples], pad)
    leaky_batch.position_ids = torch.arange(leaky_batch.input_ids.shape[1]).unsqueeze(0)
    leaky_batch.cu_seqlens, leaky_batch.max_seqlen = segment_bounds(leaky_batch.position_ids)  # varlen's bounds too
    leaky = _logits(model, leaky_batch)[0]
    at, errors, leaks = 0, [], []
    for ex in examples:
        n = len(ex.input_ids)
        alone = _logits(model, collate_padded([ex], pad))[0, :n]
        errors.append(_rel(packed[at : at + n], alone))
        leaks.append(_rel(leaky[at : at + n], alone))
        at += n
    print(f"\npacked vs alone, relative error per example: {errors}; without isolation: {leaks}")
    assert max(errors) <= 2e-2
    assert min(leaks[1:]) >= 10 * max(errors), "the check could not tell a leaking layout from an isolated one"
    # Changing the first example's tokens must not move the others' logits at all.
    first = examples[0]
    first.input_ids = [(t + 1) % pad for t in first.input_ids]
    changed = _logits(model, collate_packed([examples], pad))[0]
    n0 = len(first.input_ids)
    assert _rel(changed[n0:at], packed[n0:at]) <= 1e-3


@pytest.mark.parametrize("folder", ["llama_dir", "gemma_dir"])
def test_varlen_attention_matches_sdpa_with_the_block_mask(request, folder):
    """training.attention varlen (kielo's GPU default for packed rows) against SDPA with transformers'
    block-diagonal mask: logits of a packed batch, then the losses and first gradients of a few steps. Gemma's
    examples are longer than its sliding window (128), so the window's bound is exercised."""
    from kielo.data.batches import collate_packed
    from kielo.model.varlen import uses_varlen

    directory = request.getfixturevalue(folder)
    vocab = GEMMA_SHAPE["vocab_size"] if folder == "gemma_dir" else SHAPE["vocab_size"]
    examples = instruction_examples(1, 6, 512, vocab, seed=7)[0]
    batch = collate_packed([examples[:3], examples[3:]], vocab - 1)
    logits = {}
    for path in ("kielo", "kielo+sdpa"):
        stack = loaded(path, directory)
        assert stack.path.precision.varlen == (path == "kielo") == uses_varlen(stack.model.get_base_model())
        with torch.no_grad():
            logits[path] = _logits(stack.model, batch)
        del stack
    rel = _rel(logits["kielo"], logits["kielo+sdpa"])
    steps = instruction_examples(5, 8, 512, vocab, seed=8)
    sdpa_losses, sdpa_grads = train("kielo+sdpa", directory, steps, vocab=vocab)
    var_losses, var_grads = train("kielo", directory, steps, vocab=vocab)
    deltas = [abs(a - b) for a, b in zip(sdpa_losses, var_losses, strict=True)]
    cos = float(torch.nn.functional.cosine_similarity(sdpa_grads.double(), var_grads.double(), dim=0))
    print(f"\nvarlen vs sdpa+mask ({folder}): logits rel {rel:.5f}; max |dloss| {max(deltas):.5f} over 5 steps; cosine {cos:.6f}")
    assert rel <= 1e-2
    assert max(deltas) <= 5e-3, deltas
    assert cos >= 0.9995


PLAN_SHAPE = dict(
    vocab_size=32000,
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=8,
    num_attention_heads=16,
    num_key_value_heads=4,
    max_position_embeddings=2048,
)


@pytest.mark.parametrize("stream", ["fp32", "auto"])
def test_kielo_train_plans_its_memory(tmp_path, stream):
    """`kielo train` on CUDA: the memory plan's estimate within 10% of the run's measured peak, for the fp32
    stream and the default on Llama (the bf16 fast path: Liger + fused head when installed, fused LoRA)."""
    import json
    import random

    import transformers

    from tests.conftest import FINNISH, build_tokenizer, tiny_config

    folder = tmp_path / "model"
    tok = build_tokenizer(folder)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            **PLAN_SHAPE, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id
        )
    )
    model.to(torch.bfloat16).save_pretrained(folder)
    del model
    # Every example alike, so every packed row is alike: the plan sizes micro-batches by the heaviest rows,
    # and here the three steps run are exactly as heavy (the test is of the memory model, not of that bound).
    rnd = random.Random(0)
    row = {"instruction": " ".join(rnd.choices(FINNISH, k=8)), "output": " ".join(rnd.choices(FINNISH, k=20))}
    rows = [row] * 400
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    config = tiny_config(
        folder,
        data,
        tmp_path / "out",
        lora={"r": 16, "alpha": 32, "dropout": 0.05},
        data={"max_length": 1024, "packing": True, "validation_split": 0.05},
        training={"max_steps": 3, "micro_batch_size": 4, "device": "cuda", "stream_dtype": stream, "memory_plan": "fit"},
    )
    # A fresh process, as a user runs it: CUDA libraries' workspaces (in the estimate) are not yet allocated
    # there, while in this test process earlier tests already hold them.
    import subprocess

    from kielo.config.load import save_config

    cfg = save_config(config, tmp_path)
    subprocess.run([sys.executable, "-m", "kielo", "train", str(cfg)], check=True, cwd=Path(__file__).parent.parent)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    est, peak = summary["estimated_peak_memory_bytes"], summary["peak_memory_bytes"]
    print(
        f"\nkielo train, stream {stream}: estimated peak {est / 2**30:.3f} GiB, measured {peak / 2**30:.3f} GiB "
        f"({100 * (est / peak - 1):+.1f}%)\n{summary['memory_plan']}"
    )
    assert summary["train_loss_last"] < summary["train_loss_first"]
    assert abs(est / peak - 1) <= 0.10


def _held_by_forward(path: str, folder: Path, examples: list) -> int:
    """Bytes a forward pass leaves on the GPU for its backward (measured before the backward runs)."""
    stack = loaded(path, folder)
    batch = micro_batches(examples, stack.layout, 2, 512, SHAPE["vocab_size"] - 1)[0].to(DEVICE)
    torch.cuda.synchronize(DEVICE)
    before = torch.cuda.memory_allocated(DEVICE)
    loss, _ = stack.path.loss(stack.model, batch)
    torch.cuda.synchronize(DEVICE)
    torch.empty(1, device=DEVICE)  # lets the allocator retire blocks whose side-stream copies have finished
    held = torch.cuda.memory_allocated(DEVICE) - before
    loss.backward()
    return held


def test_checkpoint_offload_gives_the_same_steps_with_less_memory(llama_dir):
    """training.checkpoint_offload on CUDA: the same losses and LoRA gradients as keeping the layer inputs on the
    GPU (same arithmetic, copies only), and a forward pass that leaves the layer inputs off the GPU."""
    steps = full_examples(3, 2, 512, SHAPE["vocab_size"], seed=5)
    kept_losses, kept_grads = train("kielo", llama_dir, steps)
    off_losses, off_grads = train("kielo+offload", llama_dir, steps)
    held = {path: _held_by_forward(path, llama_dir, steps[0]) for path in ("kielo", "kielo+offload")}
    one_input = 2 * 512 * SHAPE["hidden_size"] * 2  # tokens x width, bf16
    print(f"\noffload: losses {off_losses} vs {kept_losses}; held by the forward {held} bytes, one layer input {one_input}")
    assert off_losses == kept_losses
    assert torch.equal(off_grads, kept_grads) and off_grads.abs().sum() > 0
    assert held["kielo"] - held["kielo+offload"] >= (SHAPE["num_hidden_layers"] - 1) * one_input


@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_kielo_train_preference_objectives_on_cuda(tmp_path, objective):
    """`kielo train` with training.objective dpo and orpo on CUDA (a tiny Llama; on the GPU default: the bf16
    stream, and with Liger installed the recomputed preference head): the adapter moves off its zero start and
    every train and validation record carries the pair metrics."""
    import json

    from safetensors.torch import load_file

    from kielo.train.preference import PAIR_METRICS
    from kielo.train.trainer import train as kielo_train
    from tests.conftest import PAIRS, build_model, tiny_config

    folder = build_model(tmp_path / "model", "llama")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in PAIRS * 6), encoding="utf-8")
    out = tmp_path / "out"
    config = tiny_config(folder, data, out, training={"objective": objective, "max_steps": 4, "device": "cuda"})
    summary = kielo_train(config, progress=False)
    assert summary["peak_memory_bytes"] > 0  # it ran on the GPU
    weights = load_file(out / "adapter_model.safetensors")
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and all(bool(torch.isfinite(t).all()) for t in weights.values())
    assert max(float(t.abs().max()) for t in lora_b) > 0, "training left LoRA B at its zero start"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    val_records = [r for r in records if r["split"] == "validation"]
    assert len(train_records) == 4 and len(val_records) >= 2
    keys = (*PAIR_METRICS, *(("nll_loss", "log_odds_ratio") if objective == "orpo" else ()))
    for r in train_records + val_records:
        missing = [k for k in keys if k not in r or not math.isfinite(r[k])]
        assert not missing, (r["split"], missing)
    pref = summary["preference"]
    assert pref["validation_start"] is not None and pref["validation_end"] is not None
    print(f"\nkielo train {objective} on CUDA: validation {pref['validation_start']} -> {pref['validation_end']}")


@torch.no_grad()
def test_packed_pairs_give_the_padded_pairs_log_probabilities(llama_dir):
    """DPO's pair batches on the GPU default: both sides of every pair in one packed row through varlen attention
    give each side the log-probability its own padded row gives; a batch that lets the sides see each other
    (one segment for the whole row) does not."""
    from kielo.bench.dpo import pair_examples
    from kielo.data.batches import segment_bounds
    from kielo.data.pairs import collate_pairs
    from kielo.train.preference import sequence_logps

    stack = loaded("kielo", llama_dir)
    assert stack.path.precision.varlen
    pad = SHAPE["vocab_size"] - 1
    pairs = pair_examples(1, 4, 512, SHAPE["vocab_size"], seed=9, mean_tokens=60)[0]
    padded = sequence_logps(stack.model, collate_pairs(pairs, pad).to(DEVICE))
    packed_batch = collate_pairs(pairs, pad, packed=True)
    packed = sequence_logps(stack.model, packed_batch.to(DEVICE))
    packed_batch.position_ids = torch.arange(packed_batch.input_ids.shape[1]).unsqueeze(0)
    packed_batch.cu_seqlens, packed_batch.max_seqlen = segment_bounds(packed_batch.position_ids)
    leaky = sequence_logps(stack.model, packed_batch.to(DEVICE))
    rel, leak = _rel(packed[0], padded[0]), _rel(leaky[0], padded[0])
    print(f"\npacked vs padded pair log-probabilities: relative error {rel:.5f}; sides seeing each other: {leak:.5f}")
    assert torch.equal(packed[1], padded[1])
    assert rel <= 5e-3
    assert leak >= 10 * rel


@torch.no_grad()
def test_triton_nf4_dequantize_matches_bitsandbytes():
    """kielo's Triton NF4 dequantize (the fused LoRA node's, kielo.model.nf4_dequant) on Llama-3.1-8B's weight
    shapes, double-quantized as kielo loads them: bitsandbytes' CUDA result bit for bit but for the rare weight
    whose nested absmax the compiler rounds once (FMA) where bitsandbytes rounds twice. Prints both kernels'
    times (a bench number, not asserted here)."""
    import bitsandbytes.functional as F

    from kielo.model import nf4_dequant as nd

    def median_us(fn, *args, reps=50):
        fn(*args)
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            torch.cuda.synchronize(DEVICE)
            times.append(start.elapsed_time(end) * 1000)
        return sorted(times)[reps // 2]

    g = torch.Generator(DEVICE).manual_seed(0)
    for out_f, in_f in ((4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)):
        w = torch.randn(out_f, in_f, device=DEVICE, generator=g, dtype=torch.bfloat16) * 0.02
        q, qs = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4", quant_storage=torch.uint8)
        assert nd.takes_triton(q, qs)
        ref, got = F.dequantize_4bit(q, qs), nd.dequantize_nf4(q, qs)
        assert got.dtype == ref.dtype == torch.bfloat16
        differ = got != ref
        ulp = (ref.float().abs() * 2**-7).clamp_min(2**-133)
        worst = ((got.float() - ref.float()).abs() / ulp).max().item()
        t_bnb, t_triton = median_us(F.dequantize_4bit, q, qs), median_us(nd.dequantize_nf4, q, qs)
        print(
            f"\nnf4 dequantize {out_f}x{in_f}: triton {t_triton:.1f} us, bitsandbytes {t_bnb:.1f} us; "
            f"weights that differ {differ.float().mean().item():.2e}, at most {worst:.2f} of a bf16 step"
        )
        assert differ.float().mean() <= 1e-3
        assert worst <= 1.0
        qs.offset = qs.offset + 0.01  # a wrong absmax is not within a step
        assert (nd.dequantize_nf4(q, qs) != ref).float().mean() > 0.5
