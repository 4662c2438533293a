"""`kielo plan`: estimate a training run's peak GPU memory and show the settings ``kielo train`` would pick.

    kielo plan [CONFIG] [--gpu_memory GIB] [--gpus N] [--mode fit|fastest]

Needs no GPU and loads no weights: the model is built on the meta device from its config (common hub models'
configs are known offline, ``kielo.plan.known``), and the data (when ``data.train`` is set) is tokenized for
its row lengths; without data every row is taken as ``data.max_length`` long. Without ``--gpu_memory`` the
budget is what the first CUDA device has free. With ``--gpus N`` the peak is per GPU, for DDP and for FSDP,
and the plan says which one to train with.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

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
    p.add_argument("--gpus", type=int, default=1, metavar="N", help="GPUs (processes) the run is spread over (default 1)")
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


def model_config(config):
    """``config`` (a run folder's model resolved) and its model's transformers config: from the known configs
    when no data needs the tokenizer, else from the folder, the hub cache or the hub."""
    from kielo.model.bundle import effective_config
    from kielo.model.load import load_model_config
    from kielo.plan.known import KNOWN_CONFIGS, known_config

    known = known_config(config.model.name)
    if known is not None and not config.data.train:
        return config, known
    try:
        config, source = effective_config(config)
        return config, load_model_config(source, config.model.trust_remote_code)
    except KieloError as e:
        if "/" not in config.model.name or known is not None:
            raise
        raise KieloError(e.message, f"{e.fix}; kielo plan knows these hub ids without a network: {', '.join(KNOWN_CONFIGS)}") from None


def run_command(args: argparse.Namespace, config) -> int:
    import torch

    from kielo.model.device import COMPUTE_DTYPES
    from kielo.model.precision import resolve_precision
    from kielo.plan.memory import GIB
    from kielo.plan.parallel import STRATEGIES, per_gpu_estimate
    from kielo.plan.planner import candidates, make_plan, pick_strategy, setup_for
    from kielo.plan.shape import shape_from_config

    if args.gpus < 1:
        raise KieloError(f"--gpus {args.gpus} is not a number of GPUs", "give --gpus 1 or more")
    budget = _budget(args.gpu_memory)
    config, found = model_config(config)
    shape = shape_from_config(found)
    # `auto` is bf16 on the cards this plans for.
    compute = COMPUTE_DTYPES.get(config.quantization.compute_dtype, torch.bfloat16)
    data, data_note = _data(config)
    mode = args.mode or (config.training.memory_plan if config.training.memory_plan != "off" else "fit")
    strategies = STRATEGIES if args.gpus > 1 else (config.training.distributed,)
    plans, precisions = {}, {}
    for s in strategies:
        c = replace(config, training=replace(config.training, distributed=s))
        precisions[s] = resolve_precision(c, shape.model_type, torch.device("cuda"), compute)
        plans[s] = make_plan(c, shape, precisions[s], data, budget, mode, args.gpus, s)
    print(
        f"model {config.model.name} ({shape.model_type}, {shape.n_layers} layers, hidden {shape.hidden}, "
        f"vocab {shape.vocab:,}); {precisions[strategies[0]].describe()}"
    )
    print(f"data: {data_note}; widest row {data.row_width} tokens{' (packed)' if data.packing else ''}")
    per = " per GPU" if args.gpus > 1 else ""
    print(f"{'strategy':>8}  {'micro-batch':>11}  {'checkpointing':>13}  {'estimated peak GiB' + per:>26}")
    for s in strategies:
        c = replace(config, training=replace(config.training, distributed=s))
        for mbs, gc in candidates(c, "fastest"):
            est = per_gpu_estimate(shape, setup_for(c, precisions[s], data, mbs, gc, shape), args.gpus, s)
            print(f"{s:>8}  {mbs:>11}  {'on' if gc else 'off':>13}  {est.total / GIB:>26.2f}")
    for s in strategies:
        print(plans[s].describe())
    chosen = pick_strategy(plans)
    if args.gpus > 1:
        verdict = "fits" if chosen.fits else "does not fit, even"
        print(
            f"choice: {chosen.strategy} {verdict} on {args.gpus} x {budget / GIB + CONTEXT_BYTES / GIB:.0f} GiB: "
            f"kielo train CONFIG --nproc {args.gpus} --training.distributed {chosen.strategy}"
            + (f" --training.micro_batch_size {chosen.micro_batch_size}" if chosen.changed else "")
        )
    return 0 if chosen.fits else 1
