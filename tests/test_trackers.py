"""training.report_to: MLflow's file store and TensorBoard's event files written by a tiny CPU run and read
back with their own readers; a tracker that is not installed, or unknown, is a clear error."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import tiny_config

from kielo.config.load import from_dict
from kielo.errors import KieloError
from kielo.train.trainer import train


def test_mlflow_and_tensorboard_get_config_curve_and_final_numbers(tiny_llama, data_file, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    cfg = tiny_config(tiny_llama, data_file, out, training={"max_steps": 3, "report_to": "[mlflow, tensorboard]"})
    summary = train(cfg, progress=False)

    client = mlflow.tracking.MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    runs = client.search_runs([client.get_experiment_by_name("kielo").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["lora.r"] == "4" and run.data.params["training.learning_rate"] == "0.01"
    assert run.data.params["data.train"] == str(data_file)
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    assert [(m.step, m.value) for m in losses] == [(r["step"], pytest.approx(r["loss"])) for r in train_records]
    assert run.data.metrics["final_validation_loss"] == pytest.approx(summary["validation_loss_end"])
    assert run.data.metrics["final_train_loss"] == pytest.approx(summary["train_loss_last"])
    assert len(client.get_metric_history(run.info.run_id, "validation_loss")) == 2  # step 0 and the end
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "kielo_config.yaml" in artifacts

    acc = event_accumulator.EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([r["loss"] for r in train_records])


def test_missing_or_unknown_tracker_is_a_clear_error(tiny_llama, data_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    cfg = tiny_config(tiny_llama, data_file, tmp_path / "run", training={"report_to": ["wandb"]})
    with pytest.raises(KieloError, match="training.report_to names wandb, which is not installed") as e:
        train(cfg, progress=False)
    assert "pip install 'kielo[wandb]'" in e.value.fix
    assert not (tmp_path / "run" / "kielo_config.yaml").exists()  # refused before anything ran
    with pytest.raises(KieloError, match="'comet' is not a tracker kielo knows"):
        from_dict({"training": {"report_to": "tensorboard,comet"}})
    assert from_dict({"training": {"report_to": "none"}}).training.report_to == []
    assert from_dict({}).training.report_to == []  # none by default (tests/test_push.py checks a run wrote none)
