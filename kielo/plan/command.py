"""`kielo plan`: estimate a training run's peak GPU memory and show the settings ``kielo train`` would pick.

    kielo plan [CONFIG] [--gpu_memory GIB] [--mode fit|fastest]

Needs no GPU and loads no weights: the model is built on the meta device from its config, and the data (when
``data.train`` is set) is tokenized for its row lengths; without data every row is taken as ``data.max_length``
long. Without ``--gpu_memory`` the budget is what the first CUDA device has free.
"""

from __future__ import annotations

import argparse

from kielo.errors import KieloError

# What a CUDA context and the allocator's own structures take on a card before any tensor (measured ~0.5 GiB
# on H100s with recent drivers); a card's nominal size overstates what training can use by about this much.
CONTEXT_BYTES = 2**29


def setup_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("config_file", nargs="?", help="YAML config file (as for kielo train)")
    p.add_argument(
        "--gpu_memory",
        type=float,
        metavar="GIB",
        help="the card's memory in GiB (e.g. 24, 80); default: what the first CUDA GPU has free",
    )
    p.add_argument("--mode", choices=("fit", "fastest"), help="planning mode (default: training.memory_plan)")


def _budget(gpu_memory: float | None) -> int:
    import torch

    if gpu_memory is not None:
        if gpu_memory <= 0.5:
            raise KieloError(f"--gpu_memory {gpu_memory} is too small to train on", "give the card's size in GiB, e.g. 24")
        return int(gpu_memory * 2**30) - CONTEXT_BYTES
    if not torch.cuda.is_available():
        raise KieloError("no CUDA GPU here to plan for", "give the target card's size: --gpu_memory 24")
    free, _ = torch.cuda.mem_get_info(0)
    return int(free)


def _data(config):
    """Row sizes from the training data, or full rows when there is none."""
    from kielo.plan.planner import data_size, full_rows

    if not config.data.train:
        return full_rows(config), "no data.train: every row taken as data.max_length long and fully trained"
    from kielo.data.prepare import encode_data, read_data
    from kielo.model.bundle import effective_config, load_tokenizer_and_template, make_encoder

    examples = read_data(config)
    config, source = effective_config(config)
    tok, template = load_tokenizer_and_template(config, source)
    items, _, _ = encode_data(make_encoder(tok, template, config), config, examples)
    return data_size(items, config.data.packing, config.data.max_length), f"{len(items)} training examples"


def run_command(args: argparse.Namespace, config) -> int:
    import torch

    from kielo.model.bundle import effective_config
    from kielo.model.device import COMPUTE_DTYPES
    from kielo.model.load import load_model_config
    from kielo.model.precision import resolve_precision
    from kielo.plan.memory import GIB, estimate
    from kielo.plan.planner import candidates, make_plan, setup_for
    from kielo.plan.shape import shape_from_config

    budget = _budget(args.gpu_memory)
    config, source = effective_config(config)
    shape = shape_from_config(load_model_config(source, config.model.trust_remote_code))
    # `auto` is bf16 on the cards this plans for.
    compute = COMPUTE_DTYPES.get(config.quantization.compute_dtype, torch.bfloat16)
    precision = resolve_precision(config, shape.model_type, torch.device("cuda"), compute)
    data, data_note = _data(config)
    mode = args.mode or (config.training.memory_plan if config.training.memory_plan != "off" else "fit")
    print(
        f"model {config.model.name} ({shape.model_type}, {shape.n_layers} layers, hidden {shape.hidden}, "
        f"vocab {shape.vocab:,}); {precision.describe()}"
    )
    print(f"data: {data_note}; widest row {data.row_width} tokens{' (packed)' if data.packing else ''}")
    print(f"{'micro-batch':>11}  {'checkpointing':>13}  {'estimated peak GiB':>18}")
    for mbs, gc in candidates(config, "fastest"):
        est = estimate(shape, setup_for(config, precision, data, mbs, gc))
        print(f"{mbs:>11}  {'on' if gc else 'off':>13}  {est.total / GIB:>18.2f}")
    plan = make_plan(config, shape, precision, data, budget, mode)
    print(plan.describe())
    return 0 if plan.fits else 1
