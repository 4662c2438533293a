"""Data-parallel training on CPU with gloo, 2 processes: the gradients of a distributed step are the
single-process step's, a distributed run killed and resumed ends bit for bit where an uninterrupted one ends,
and only rank 0 writes."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from conftest import tiny_config
from fault_harness import AUDIT_ENV, _ctx, distributed_env, kielo, ranks
from test_faults import assert_same_run, write_config

from kielo.errors import KieloError
from kielo.train.distributed import SINGLE, World, check_accumulation

ACCUMULATION = 4


def _step_gradients(config, world: World) -> tuple[dict[str, torch.Tensor], float]:
    """LoRA gradients and loss of the first optimizer step of ``config``'s run, as the trainer computes them."""
    from kielo.data.batches import BatchLayout
    from kielo.data.prepare import prepare_data, read_data
    from kielo.model.adapter import add_lora
    from kielo.model.bundle import load_bundle
    from kielo.model.precision import resolved_precision
    from kielo.train.step import gradient_step, training_path
    from kielo.train.trainer import seed_everything

    t = config.training
    seed_everything(t.seed)
    bundle = load_bundle(config, for_training=True)
    items, _, _ = prepare_data(bundle, read_data(config))
    path = training_path(resolved_precision(bundle.config))
    model = add_lora(bundle.model, config.lora, path.lora_forward)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    layout = BatchLayout(items, t.micro_batch_size, bundle.tokenizer.pad_token_id, t.seed, config.data.packing, config.data.max_length)
    work = gradient_step(model, layout, 0, t.gradient_accumulation, bundle.device, path.loss, list(params.values()), world)
    return {n: p.grad.clone() for n, p in params.items()}, work.loss


def _rank_gradients(rank: int, n: int, port: int, config, out: str) -> None:
    import torch.distributed as dist

    from kielo.train.distributed import init_world

    os.environ.update(distributed_env(rank, n, port))
    world = init_world("cpu")
    grads, loss = _step_gradients(config, world)
    torch.save({"grads": grads, "loss": loss}, f"{out}.{rank}")
    dist.destroy_process_group()


def _single_gradients(config, out: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    grads, loss = _step_gradients(config, SINGLE)
    torch.save({"grads": grads, "loss": loss}, out)


def test_distributed_gradients_equal_single_process(tiny_llama, data_file, tmp_path):
    """2 ranks, each 2 of the step's 4 micro-batches: the summed LoRA gradients are the single-process
    gradients of all 4 (fp32, within 1e-6), on every rank, and so is the token-normalised loss."""
    from kielo.train.launch import free_port

    config = tiny_config(
        tiny_llama,
        data_file,
        tmp_path / "run",
        data={"max_length": 64},
        training={"micro_batch_size": 1, "gradient_accumulation": ACCUMULATION, "device": "cpu"},
    )
    port = free_port()
    procs = [_ctx.Process(target=_rank_gradients, args=(r, 2, port, config, str(tmp_path / "grads"))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    # The reference in a fresh process on the ranks' thread count (init_world gives each of 2 local ranks half the
    # cores), as the ranks run: another count sums the fp32 GEMMs in another order (~1e-6 apart, the tolerance
    # below), and the test process may hold state earlier tests left (the bench's in-process run moves the loss).
    single = _ctx.Process(target=_single_gradients, args=(config, str(tmp_path / "grads.single")))
    single.start()
    single.join(120)
    assert single.exitcode == 0
    ref = torch.load(tmp_path / "grads.single", weights_only=True)
    want, want_loss = ref["grads"], ref["loss"]
    assert any(float(g.abs().max()) > 0 for g in want.values())  # the step moves the LoRA at all
    one_rank, _ = _rank_halves(config)
    for r in range(2):
        got = torch.load(tmp_path / f"grads.{r}", weights_only=True)
        assert got["loss"] == pytest.approx(want_loss, rel=1e-6)
        assert got["grads"].keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got["grads"][k], want[k], rtol=0, atol=1e-6)
    # One rank's own half is not the whole step's gradient: the sum over the ranks is what makes it equal.
    assert max(float((one_rank[k] - want[k]).abs().max()) for k in want) > 1e-4


def _rank_halves(config):
    """The gradient of half the step's micro-batches normalised by their own tokens: what one rank holds
    when nothing is summed over the ranks."""
    from dataclasses import replace

    t = replace(config.training, gradient_accumulation=ACCUMULATION // 2)
    return _step_gradients(replace(config, training=t), SINGLE)


def test_accumulation_must_split_over_the_ranks():
    check_accumulation(World(0, 2), 4)
    with pytest.raises(KieloError, match="multiple of 2"):
        check_accumulation(World(0, 2), 3)
    assert list(World(1, 2).micro_offsets(4)) == [1, 3]


def _train_args(cfg, out) -> list[str]:
    return ["train", str(cfg), "--output_dir", str(out), "--training.device", "cpu"]


def test_distributed_resume_after_kill_is_exact(tiny_llama, tmp_path):
    """A 2-rank run (dropout on: each rank's own random stream) killed mid-checkpoint on rank 0 and resumed
    on 2 ranks ends with the uninterrupted 2-rank run's adapter bit for bit and one train record per step."""
    cfg = write_config(tmp_path, tiny_llama, max_steps=4, gradient_accumulation=2)
    ref, out = tmp_path / "ref", tmp_path / "out"
    runs = ranks(_train_args(cfg, ref), 2, tmp_path)
    assert [r.code for r in runs] == [0, 0], runs[0].log + runs[1].log
    killed = ranks(_train_args(cfg, out), 2, tmp_path, fault="checkpoint-state@2")
    assert killed[0].code == -9  # rank 0 died writing step-2's state; its peer was stopped
    resumed = ranks(_train_args(cfg, out) + ["--resume"], 2, tmp_path)
    assert [r.code for r in resumed] == [0, 0], resumed[0].log
    assert "resumed from" in resumed[0].log and "step 1 of 4" in resumed[0].log
    assert_same_run(out, ref)
    # Each rank drew its own dropout masks, and the checkpoint kept both streams.
    state = torch.load(out / "checkpoints" / "step-3" / "trainer_state.pt", weights_only=True)
    assert len(state["rng_ranks"]) == 2 and not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])


def test_only_rank_zero_writes_and_nproc_matches_single_process(tiny_llama, tmp_path):
    """`kielo train --nproc 2` writes what a single-process run writes, the same losses; rank 1 of a
    2-rank run asks Python for no file-system change in the run folder at all."""
    cfg = write_config(tmp_path, tiny_llama, max_steps=3, gradient_accumulation=2, save_every=2)
    settings = yaml.safe_load(cfg.read_text())
    settings["lora"]["dropout"] = 0.0  # each rank draws its own dropout masks: without dropout the losses agree
    cfg.write_text(yaml.safe_dump(settings))
    single, spawned, watched = tmp_path / "single", tmp_path / "spawned", tmp_path / "watched"
    assert kielo(_train_args(cfg, single), tmp_path / "single.log").code == 0
    run = kielo(_train_args(cfg, spawned) + ["--nproc", "2"], tmp_path / "spawned.log")
    assert run.code == 0, run.log
    assert "started 2 training processes" in run.log

    def files(root):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "tensorboard" not in p.parts)

    assert files(spawned) == files(single)
    losses = [
        [(r["step"], round(r["loss"], 5)) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
        for d in (single, spawned)
    ]
    assert losses[0] == losses[1]
    assert json.loads((spawned / "summary.json").read_text())["processes"] == 2

    record = tmp_path / "rank-writes.txt"
    audit = {r: {AUDIT_ENV: str(record), AUDIT_ENV + "_UNDER": str(watched)} for r in range(2)}
    runs = ranks(_train_args(cfg, watched), 2, tmp_path, env=audit)
    assert [r.code for r in runs] == [0, 0], runs[0].log
    lines = record.read_text().splitlines()
    # The hook works (rank 0's writes are recorded) and rank 1's process recorded none.
    assert any("metrics.jsonl" in line for line in lines)
    assert all(f"pid {runs[1].pid}" not in line for line in lines)


def test_rank_writes_are_recorded_per_process(tmp_path):
    """The audit hook names the process that wrote: without that the check above could not fail."""
    import subprocess
    import sys

    here = os.path.dirname(__file__)
    code = (
        f"import sys; sys.path.insert(0, {here!r}); from fault_harness import _audit_writes; "
        f"_audit_writes({str(tmp_path / 'rec.txt')!r}, {str(tmp_path / 'w')!r}); "
        f"import os; os.mkdir({str(tmp_path / 'w')!r}); open({str(tmp_path / 'w' / 'x')!r}, 'w').close()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    lines = (tmp_path / "rec.txt").read_text().splitlines()
    assert len(lines) == 2 and all("pid " in line for line in lines)
