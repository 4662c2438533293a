"""`kielo bench` end to end on CPU (tiny shape): both paths run, their losses and gradients agree, and every
kielo case carries the memory planner's inputs and estimate."""

from __future__ import annotations

import json


def test_kielo_bench_runs_stock_and_kielo_in_one_invocation(tmp_path, capsys):
    from kielo.cli import main

    rc = main(["bench", "--shape", "tiny", "--seq", "128", "--max-length", "1024", "--examples-per-step", "8",
               "--warmup-a", "1", "--timed-a", "1", "--warmup-b", "1", "--timed-b", "1",
               "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
               "--plan", "stock:a,b kielo:a,b"])
    assert rc == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert [(r["variant"], r["case"]) for r in results] == [("stock", "a"), ("stock", "b"), ("kielo", "a"),
                                                            ("kielo", "b")]
    assert all("error" not in r and r["tok_s"] > 0 for r in results)
    for r in results[2:]:
        # On CPU both paths compute in fp32: the same losses and gradients up to summation order.
        assert r["max_loss_delta"] < 1e-3 and min(r["grad_cosine"]) > 0.999
        assert r["plan_setup"]["tokens"] > 0 and r["planned_gib"] is not None
    stock_b, kielo_b = results[1], results[3]
    # kielo packs several examples into a row, stock pads each pair of examples
    assert kielo_b["micro_batches_per_step"] < stock_b["micro_batches_per_step"]
    assert "vs stock" in capsys.readouterr().out
