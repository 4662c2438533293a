"""The multi-GPU bench's plumbing on CPU with gloo, 2 processes (``kielo bench --nproc 2``, tiny shape): the
1-process and 2-process runs of kielo's data-parallel step each process the same tokens per rank, the ranks end
with the same LoRA weights, and the scaling factor is the ratio of the measured rates; what --nproc refuses."""

from __future__ import annotations

import json
import math

import pytest

from kielo.bench.cases import PRODUCT, parse_cases
from kielo.bench.multigpu import add_scaling, check_entries, comparison_problem
from kielo.errors import KieloError

BATCH, SEQ = 2, 128


def test_ddp_scaling_from_one_to_two_processes(tmp_path, capsys):
    from kielo.bench.models import make_model
    from kielo.cli import main

    work = tmp_path / "work"
    make_model(work / "model-tiny", "tiny")  # here, not in a subprocess: one interpreter start less
    import torch

    assert torch.get_default_dtype() == torch.float32  # built in bf16, the process's default left as it was
    args = ["bench", "--nproc", "2", "--shape", "tiny", "--seq", str(SEQ), "--max-length", str(SEQ), "--batch", str(BATCH)]
    args += ["--warmup-a", "1", "--timed-a", "2", "--peak-tflops", "1", "--workdir", str(work), "--out", str(tmp_path / "out")]
    assert main([*args, "--cases", "kielo:a"]) == 0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["meta"]["nproc"] == 2
    one, two = saved["results"]
    assert "error" not in one and "error" not in two, saved["results"]
    assert (one["processes"], one["distributed"], two["processes"], two["distributed"]) == (1, "none", 2, "ddp")
    # Every rank computed the single process's micro-batches: its tokens per step, twice them in all.
    assert one["real_tokens_per_step"] == BATCH * SEQ and one["rank_tokens_per_step"] == [BATCH * SEQ]
    assert two["rank_tokens_per_step"] == [BATCH * SEQ, BATCH * SEQ] and two["real_tokens_per_step"] == 2 * BATCH * SEQ
    assert one["micro_batches_per_rank"] == two["micro_batches_per_rank"] == 1
    assert one["steps"] == two["steps"] == 3 and all(math.isfinite(x) for x in one["losses"] + two["losses"])
    # The ranks computed different micro-batches, yet hold the same LoRA weights: the gradients were summed.
    a, b = two["rank_lora_sums"]
    assert a == b and a != one["rank_lora_sums"][0]
    assert two["scaling"] == round(two["tok_s"] / one["tok_s"], 3) and one["tok_s"] > 0 and "scaling" not in one
    assert one["peak_gib"] is None  # no GPU: no peak memory measured, none made up
    assert "scaling" in capsys.readouterr().out


def _row(processes: int, total: int, ranks: list[int], tok_s: int) -> dict:
    distributed = "ddp" if processes > 1 else "none"
    return {"variant": "kielo", "case": "a", "processes": processes, "distributed": distributed, "tok_s": tok_s} | {
        "real_tokens_per_step": total,
        "rank_tokens_per_step": ranks,
    }


def test_scaling_only_between_runs_of_the_same_per_rank_work():
    one = _row(1, 4096, [4096], 1000)
    good = [one, _row(2, 8192, [4096, 4096], 1900)]
    add_scaling(good)
    assert good[1]["scaling"] == 1.9 and "scaling_error" not in good[1]
    # A rank that took every micro-batch of the step, ranks that split the single process's batch, a total
    # that is not the ranks' sum: not the same per-rank work, so no scaling factor.
    for wrong in (_row(2, 16384, [8192, 8192], 3800), _row(2, 4096, [2048, 2048], 1000), _row(2, 4096, [4096, 4096], 1000)):
        assert comparison_problem(one, wrong) is not None
        rows = [dict(one), wrong]
        add_scaling(rows)
        assert "scaling" not in rows[1] and rows[1]["scaling_error"]


@pytest.mark.parametrize(
    "cases, nproc, says",
    [
        ("stock:a", 2, "not stock"),
        ("kielo:b", 2, "data a"),
        ("kielo+fsdp:a/nogc", 2, "checkpoint every layer"),
    ],
)
def test_nproc_refuses_what_it_does_not_time(cases, nproc, says):
    with pytest.raises(KieloError, match=says):
        check_entries(parse_cases(cases, PRODUCT), nproc)


def test_fsdp_variants_need_several_processes(tmp_path):
    from kielo.cli import main

    args = ["bench", "--shape", "tiny", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--cases", "kielo+fsdp:a"]
    assert main(args) == 2
