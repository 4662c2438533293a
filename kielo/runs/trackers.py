"""Experiment trackers (``training.report_to``): TensorBoard, Weights & Biases, MLflow and Trackio.

Each gets the resolved config (as flat hyperparameters and as the whole file), every record of
metrics.jsonl, and at the end the run's final numbers (validation loss and perplexity, last train loss,
tokens, time). Each is an optional extra, imported only when named; :func:`check_trackers` fails before any
weights load when one is missing. None needs a network: TensorBoard and MLflow write files (MLflow's file
store, ``mlruns/`` in the run folder unless ``training.mlflow_uri`` or ``MLFLOW_TRACKING_URI`` says
otherwise), Trackio keeps a local database, and W&B runs offline with ``WANDB_MODE=offline``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kielo.errors import KieloError
from kielo.extras import install_hint, installed

log = logging.getLogger(__name__)

# tracker -> the module it needs
MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
PROJECT = "kielo"  # the W&B / MLflow / Trackio project (experiment) unless their own variables name one


def check_trackers(report_to: list[str]) -> None:
    """Fail with the install command when a tracker in ``report_to`` is not installed."""
    missing = [t for t in report_to if not installed(MODULES[t])]
    if missing:
        t = missing[0]
        raise KieloError(
            f"training.report_to names {t}, which is not installed", f"{install_hint(MODULES[t])}, or drop {t} from training.report_to"
        )


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """The config as ``section.key -> text`` pairs, the shape trackers' parameter tables take."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and prefix == "":
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def _scalars(record: dict) -> dict[str, float]:
    split = record.get("split", "train")
    return {
        f"{split}/{k}": float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
    }


class TensorBoard:
    """Event files in ``output_dir/tensorboard`` (the config as text, the final numbers as hparams)."""

    def __init__(self, out: Path, config: dict):
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tensorboard"))
        self.params = flat_params(config)
        self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True) + "\n```")

    def log(self, record: dict) -> None:
        for k, v in _scalars(record).items():
            self.writer.add_scalar(k, v, record["step"])

    def finish(self, final: dict) -> None:
        if final:
            self.writer.add_hparams(self.params, {f"final/{k}": v for k, v in final.items()}, run_name=".")
        self.writer.close()


class Wandb:
    """A W&B run in ``output_dir/wandb``; ``WANDB_MODE=offline`` keeps it local (``wandb sync`` uploads it)."""

    def __init__(self, out: Path, config: dict):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), name=out.name, dir=str(out), config=config)

    def log(self, record: dict) -> None:
        self.run.log(_scalars(record), step=record["step"])

    def finish(self, final: dict) -> None:
        self.run.summary.update({f"final/{k}": v for k, v in final.items()})
        self.run.finish()


class Mlflow:
    """An MLflow run: flat params, the config file as an artifact, metrics by step, final numbers."""

    def __init__(self, out: Path, config: dict, uri: str | None):
        import mlflow

        self.mlflow = mlflow
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or (out / "mlruns").resolve().as_uri()
        if "://" not in uri or uri.startswith("file:"):
            # MLflow 3 refuses its file store unless told it is wanted; it is the store that needs no server or
            # database, and the one asked for here.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT))
        if mlflow.active_run() is not None:  # left open by a run that failed earlier in this process
            mlflow.end_run(status="FAILED")
        self.run = mlflow.start_run(run_name=out.name)
        # MLflow caps a parameter value's length; the whole config goes in as an artifact anyway.
        mlflow.log_params({k: v[:500] for k, v in flat_params(config).items()})
        mlflow.log_dict(config, "kielo_config.yaml")
        log.info("MLflow run %s at %s", self.run.info.run_id, uri)

    def log(self, record: dict) -> None:
        self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in _scalars(record).items()}, step=record["step"])

    def finish(self, final: dict) -> None:
        if final:
            self.mlflow.log_metrics({f"final_{k}": v for k, v in final.items()})
        self.mlflow.end_run()


class Trackio:
    """A Trackio run (a local database; its dashboard: ``trackio show``)."""

    def __init__(self, out: Path, config: dict):
        import trackio

        self.trackio = trackio
        trackio.init(project=os.environ.get("TRACKIO_PROJECT", PROJECT), name=out.name, config=config)

    def log(self, record: dict) -> None:
        self.trackio.log(_scalars(record), step=record["step"])

    def finish(self, final: dict) -> None:
        if final:
            self.trackio.log({f"final/{k}": v for k, v in final.items()})
        self.trackio.finish()


def open_trackers(out: Path, config: dict, report_to: list[str], mlflow_uri: str | None = None) -> list:
    """The trackers ``report_to`` names, started for the run in ``out`` with its resolved ``config``."""
    check_trackers(report_to)
    made = {"tensorboard": TensorBoard, "wandb": Wandb, "trackio": Trackio}
    return [Mlflow(out, config, mlflow_uri) if t == "mlflow" else made[t](out, config) for t in report_to]


def final_numbers(summary: dict) -> dict[str, float]:
    """What a run reports to its trackers at the end: the last validation loss and perplexity and the train
    loss, tokens and time (those that exist)."""
    import math

    out = {}
    val = summary.get("validation_loss_end")
    if val is not None:
        out["validation_loss"] = float(val)
        out["validation_perplexity"] = math.exp(min(float(val), 50.0))
    for key, name in (("train_loss_last", "train_loss"), ("tokens_seen", "tokens"), ("wall_time_s", "wall_time_s")):
        if summary.get(key) is not None:
            out[name] = float(summary[key])
    return out
