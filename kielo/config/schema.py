"""The one typed config schema. YAML files, CLI flags, validation and the README reference derive from it.

Each field's ``metadata["help"]`` is its documentation; ``choices`` restricts string values. Cross-field
rules live in ``__post_init__`` so a config is valid the moment it exists. Every section is frozen: a
changed config is a new one (``dataclasses.replace``), so a resolved config saved beside a run is exactly
the one it trained with.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from kielo.errors import KieloError


def opt(default: Any, help: str, choices: tuple | None = None, factory: Any = None) -> Any:
    """A schema field with its help text (and allowed values) attached."""
    meta = {"help": help, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _check_choices(section: Any, prefix: str) -> None:
    for f in fields(section):
        choices = f.metadata.get("choices")
        value = getattr(section, f.name)
        if choices and value not in choices:
            raise KieloError(
                f"{prefix}.{f.name} = {value!r} is not allowed",
                f"use one of: {', '.join(map(str, choices))}",
            )


def as_list(value: Any) -> Any:
    """One rule for list-valued keys, from YAML or the command line: ``[]`` and ``[a, b]`` are YAML lists, ``a,b``
    is split at the commas; any other value (a lone string, an existing list) is returned as it is."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        import yaml

        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:
            parsed = None
        if not isinstance(parsed, list) or any(isinstance(v, (list, dict)) or v is None for v in parsed):
            raise KieloError(f"`{value}` is not a list", "write [a, b], a,b or [] (an empty list)")
        return [str(v) for v in parsed]
    if "," in text:
        return [t.strip() for t in text.split(",") if t.strip()]
    return value


def _positive(value: float, key: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise KieloError(f"{key} = {value} must be {'>= 0' if allow_zero else '> 0'}", f"set {key} to a positive value")


@dataclass(frozen=True)
class ModelConfig:
    name: str = opt(
        "gemma-3-270m",
        "Base model: a hub id, a local HF folder, a .gguf file, a kielo training output folder, or the alias "
        "`gemma-3-270m` (embedded default, installed from PyPI, works offline).",
    )
    trust_remote_code: bool = opt(False, "Allow the model's own Python code from its folder or hub repo to run.")

    def __post_init__(self) -> None:
        if not str(self.name).strip():
            raise KieloError("model.name is empty", "give a hub id, a local folder, a .gguf file or `gemma-3-270m`")


@dataclass(frozen=True)
class QuantizationConfig:
    bits: int = opt(4, "Base weights: 4 (QLoRA), 8 (LLM.int8) or 0 (no quantization: plain LoRA).", (4, 8, 0))
    quant_type: str = opt("nf4", "4-bit data type.", ("nf4", "fp4"))
    double_quant: bool = opt(True, "Quantize the 4-bit scales too (saves ~0.37 bit per parameter).")
    compute_dtype: str = opt(
        "auto",
        "Dtype of the matmuls and of unquantized weights. auto: bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU.",
        ("auto", "bf16", "fp16", "fp32"),
    )

    def __post_init__(self) -> None:
        _check_choices(self, "quantization")


@dataclass(frozen=True)
class LoraConfig:
    r: int = opt(16, "LoRA rank.")
    alpha: float = opt(32, "LoRA scaling numerator: updates are scaled by alpha/r (alpha/sqrt(r) with rsLoRA).")
    dropout: float = opt(0.05, "Dropout on the LoRA input.")
    target_modules: Any = opt(
        "all-linear",
        "Modules that get adapters: a list of module names (e.g. [q_proj, v_proj]) or `all-linear`.",
    )
    bias: str = opt("none", "Which biases train.", ("none", "all", "lora_only"))
    use_rslora: bool = opt(False, "Rank-stabilized LoRA scaling alpha/sqrt(r).")
    use_dora: bool = opt(False, "Weight-decomposed LoRA (DoRA).")
    init_from: str | None = opt(
        None,
        "Start from a saved adapter (a kielo run folder, checkpoint or PEFT adapter folder) instead of a new one: its "
        "rank, alpha, dropout and target modules replace lora.*; with a dpo objective it is also the reference.",
    )

    def __post_init__(self) -> None:
        _check_choices(self, "lora")
        _positive(self.r, "lora.r")
        _positive(self.alpha, "lora.alpha")
        if not 0 <= self.dropout < 1:
            raise KieloError(f"lora.dropout = {self.dropout} is out of range", "use a value in [0, 1)")
        tm = as_list(self.target_modules)
        if isinstance(tm, str) and tm != "all-linear":
            tm = [tm]
        object.__setattr__(self, "target_modules", tm)
        if tm != "all-linear" and not (isinstance(tm, list) and tm and all(isinstance(t, str) for t in tm)):
            raise KieloError(f"lora.target_modules = {tm!r} is not valid", "give a non-empty list of module names or `all-linear`")


@dataclass(frozen=True)
class DataConfig:
    train: str | None = opt(
        None,
        "Training data: a JSONL, JSON, CSV or Parquet file, a folder written by datasets' save_to_disk, or a hub "
        "dataset id (org/name); rows in alpaca style, chat messages or ShareGPT conversations.",
    )
    validation: str | None = opt(
        None,
        "Validation data, as data.train (or use data.validation_split); a hub id or save_to_disk folder reads its "
        "`validation` split unless written ID:SPLIT.",
    )
    subset: str | None = opt(None, "The configuration (subset) of a hub dataset, e.g. `fi` of a multilingual set.")
    split: str = opt("train", "The split data.train reads from a hub dataset or a save_to_disk folder (ID:SPLIT also works).")
    revision: str | None = opt(None, "The hub dataset's revision: a branch, tag or commit (default: the main branch).")
    columns: Any = opt(
        None,
        "Column names mapped onto kielo's ({question: instruction, answer: output}): renamed in every row before "
        "the style is detected (a row that already has the target name keeps its own).",
        factory=dict,
    )
    streaming: bool = opt(
        False,
        "Read data.train as a stream (datasets' iterable dataset) instead of loading it: rows are encoded as "
        "training reaches them, in stored order; needs training.max_steps; the position is saved in checkpoints.",
    )
    validation_split: float = opt(0.0, "Fraction of the training file held out for validation (0 = none).")
    max_length: int = opt(1024, "Longest example, in tokens, including template and end token.")
    overlong: str = opt("truncate", "What to do with longer examples.", ("truncate", "drop"))
    train_on_prompt: bool = opt(False, "Also train on prompt tokens (default: loss on responses only).")
    template: str = opt(
        "auto",
        "Prompt format: the model's chat template (`chat`), kielo's built-in Finnish template (`builtin`), or "
        "`auto` (chat template when the tokenizer has one, else built-in).",
        ("auto", "builtin", "chat"),
    )
    packing: bool = opt(False, "Pack several examples per row, attention isolated per example (no padding).")
    system_prompt: str | None = opt(None, "System message put before every example that has none.")

    def __post_init__(self) -> None:
        _check_choices(self, "data")
        columns = self.columns
        if isinstance(columns, str):
            import yaml

            try:
                columns = yaml.safe_load(columns) if columns.strip() else {}
            except yaml.YAMLError:
                columns = None
        columns = {} if columns is None and not self.columns else columns
        if not isinstance(columns, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in columns.items()):
            raise KieloError(
                f"data.columns = {self.columns!r} is not a mapping of names", "write {question: instruction, answer: output}"
            )
        object.__setattr__(self, "columns", columns)
        if self.streaming and self.validation_split:
            raise KieloError(
                "data.streaming reads data.train as it trains, so data.validation_split can't hold rows out of it",
                "give a validation set with data.validation, or set data.streaming false",
            )
        if self.validation and self.validation_split:
            raise KieloError(
                "both data.validation and data.validation_split are set",
                "keep one: a validation file, or a fraction of the training file",
            )
        if not 0 <= self.validation_split < 1:
            raise KieloError(f"data.validation_split = {self.validation_split} is out of range", "use a value in [0, 1)")
        _positive(self.max_length, "data.max_length")
        if self.max_length < 8:
            raise KieloError(f"data.max_length = {self.max_length} is too short", "use at least 8 tokens")


OBJECTIVES = ("sft", "dpo", "orpo", "simpo")
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")


@dataclass(frozen=True)
class TrainingConfig:
    objective: str = opt(
        "sft",
        "What is trained: sft = next-token loss on the answers; dpo = Direct Preference Optimization on "
        "chosen/rejected pairs against a frozen reference; orpo = odds-ratio preference loss plus the chosen "
        "answer's loss, no reference; simpo = SimPO, the margin of the answers' mean token log-probabilities "
        "(length-normalised, no reference). dpo, orpo and simpo need preference data (chosen and rejected answers).",
        OBJECTIVES,
    )
    beta: float = opt(
        0.1,
        "Preference strength: dpo's beta (the implicit reward is beta times the log-probability ratio to the "
        "reference); orpo's weight of the odds-ratio term (TRL's ORPOConfig calls it beta too); simpo's scale of "
        "the mean log-probability margin (TRL's CPOConfig beta; SimPO's paper uses 2 to 10).",
    )
    simpo_gamma: float = opt(
        0.5,
        "simpo's target margin: the loss is -log sigmoid(beta x (mean log p(chosen) - mean log p(rejected)) - "
        "simpo_gamma), as TRL's CPOConfig(loss_type='simpo', cpo_alpha=0) computes it.",
    )
    reference: str = opt(
        "auto",
        "dpo's reference log-probabilities: adapter_off = the policy with its adapter switched off (the base), "
        "computed at every step; cached = computed once before the first step (with lora.init_from's adapter "
        "when given, else the base) and saved in the run folder; auto = cached with lora.init_from, else adapter_off.",
        ("auto", "adapter_off", "cached"),
    )
    epochs: float = opt(1.0, "Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = opt(0, "Optimizer steps to run; 0 = derive from epochs.")
    micro_batch_size: int = opt(4, "Examples (or packed rows) per forward pass.")
    gradient_accumulation: int = opt(1, "Micro-batches per optimizer step.")
    learning_rate: float = opt(2e-4, "Peak learning rate.")
    warmup_steps: int = opt(0, "Linear warmup steps.")
    scheduler: str = opt("cosine", "Learning-rate schedule after warmup.", ("cosine", "linear", "constant"))
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    max_grad_norm: float = opt(1.0, "Gradient clipping norm (0 = off).")
    optimizer: str = opt("adamw", "Optimizer; the 8-bit ones need CUDA.", ("adamw", "adamw_8bit", "paged_adamw_8bit"))
    seed: int = opt(42, "Seed for data order, LoRA init and dropout.")
    eval_every: int = opt(0, "Evaluate on validation every N steps (always at step 0 and at the end); 0 = only those.")
    save_every: int = opt(0, "Write a checkpoint every N steps; 0 = only the final adapter.")
    keep_last: int = opt(2, "Checkpoints to keep.")
    gradient_checkpointing: bool = opt(True, "Recompute activations in the backward pass to save memory.")
    checkpoint_offload: str = opt(
        "auto",
        "With gradient_checkpointing on CUDA: keep each checkpointed layer's input in pinned CPU memory (copied "
        "on a side stream while the layer computes, prefetched one layer ahead in backward) instead of on the "
        "GPU: layers x tokens x width x 2 bytes less (1 GiB for Llama-3.1-8B at 4,096 tokens). auto = on for "
        "models 4,096 or more wide (there the copies hide behind the layer's compute; narrower layers lose speed), "
        "not with fsdp; true/false also work.",
        ("auto", "on", "off"),
    )
    distributed: str = opt(
        "ddp",
        "How a run of several processes (--nproc, torchrun, accelerate launch) spreads the model: ddp = every "
        "process holds the whole 4-bit base and the LoRA, gradients summed; fsdp = FSDP2 shards each decoder "
        "layer's 4-bit weights, the LoRA and the optimizer state over the processes (for models whose 4-bit "
        "weights do not fit one GPU; 4-bit storage in the compute dtype, residual stream in the compute dtype). "
        "`kielo plan --gpus N` says which fits. A single process with fsdp trains unsharded with the same storage "
        "and stream.",
        ("ddp", "fsdp"),
    )
    memory_plan: str = opt(
        "fit",
        "On a GPU, estimate the step's peak memory before training and choose micro_batch_size (trading it "
        "against gradient_accumulation, same examples per step) and gradient_checkpointing: fit = keep these "
        "settings when they fit, else the fastest leaner ones; fastest = the fastest that fit (no "
        "checkpointing, bigger micro-batches); off = use them as given.",
        ("fit", "fastest", "off"),
    )
    stream_dtype: str = opt(
        "auto",
        "Dtype of the unquantized weights (embedding, norms, head), so of the residual stream, when training a "
        "quantized model: fp32 as peft's k-bit preparation does (the stock stack's arithmetic); compute = "
        "quantization.compute_dtype (faster and leaner on GPU, LoRA gradients slightly further from fp32's); "
        "auto = compute for the families measured close to fp32 (Gemma 3, Llama) on CUDA, else fp32. A run's "
        "saved config holds the resolved choice.",
        ("auto", "fp32", "compute"),
    )
    kernels: str = opt(
        "auto",
        "Fused GPU kernels: liger = Liger's RMSNorm, RoPE and MLP kernels and its fused linear cross-entropy "
        "head (Llama, Gemma 3; needs CUDA and liger-kernel); auto = liger when installed and the stream is in "
        "the compute dtype; none = off.",
        ("auto", "liger", "none"),
    )
    attention: str = opt(
        "auto",
        "Attention of packed rows that hold several examples (and of DPO/ORPO pairs, whose sides then share one "
        "packed row): varlen = torch's variable-length flash attention over each example's bounds (needs CUDA, "
        "torch >= 2.10 and the compute-dtype stream; decoders with position ids); sdpa = SDPA with a "
        "block-diagonal mask (pairs padded); auto = varlen where it runs, else sdpa. Rows of one example, padded "
        "batches, evaluation and generation use SDPA either way.",
        ("auto", "varlen", "sdpa"),
    )
    on_divergence: str = opt(
        "stop",
        "What a diverging step does (a non-finite loss or gradient, a loss far above its running value, or a "
        "collapse to the uniform-distribution loss ln(vocabulary) with no gradient): stop = end the run with an "
        "error naming the step (exit 2); skip = leave the weights as they were and go on (at most 3 steps in a "
        "row, then stop). Either way the last checkpoint written before the divergence is kept. dpo, orpo and simpo check "
        "finiteness only: their loss over a few pairs jumps on one misranked pair in a healthy run.",
        ("stop", "skip"),
    )
    log_every: int = opt(1, "Write train metrics every N steps.")
    report_to: Any = opt(
        None,
        "Experiment trackers that get the config, the training curve and the final validation numbers besides "
        "metrics.jsonl: a list of tensorboard, wandb, mlflow, trackio ([] = none). Each is an optional extra.",
        factory=list,
    )
    mlflow_uri: str | None = opt(
        None,
        "MLflow tracking URI for report_to mlflow (default: MLFLOW_TRACKING_URI, else the file store mlruns/ in output_dir).",
    )
    device: str = opt("auto", "Where to train: auto (CUDA when present), cpu or cuda.", ("auto", "cpu", "cuda"))

    def __post_init__(self) -> None:
        # the key was a boolean before auto: true/false (YAML booleans, or their words from the command line) stay valid
        offload = {True: "on", False: "off", "true": "on", "false": "off"}.get(
            self.checkpoint_offload if isinstance(self.checkpoint_offload, bool) else str(self.checkpoint_offload).lower()
        )
        if offload is not None:
            object.__setattr__(self, "checkpoint_offload", offload)
        _check_choices(self, "training")
        for key in ("micro_batch_size", "gradient_accumulation", "learning_rate", "log_every", "keep_last"):
            _positive(getattr(self, key), f"training.{key}")
        for key in ("max_steps", "warmup_steps", "weight_decay", "max_grad_norm", "eval_every", "save_every"):
            _positive(getattr(self, key), f"training.{key}", allow_zero=True)
        if self.max_steps == 0:
            _positive(self.epochs, "training.epochs")
        _positive(self.beta, "training.beta")
        trackers = as_list(self.report_to)
        trackers = [] if trackers in (None, "none", "") else [trackers] if isinstance(trackers, str) else trackers
        unknown = [t for t in trackers if t not in TRACKERS] if isinstance(trackers, list) else [trackers]
        if unknown:
            raise KieloError(
                f"training.report_to: {unknown[0]!r} is not a tracker kielo knows", f"use a list of: {', '.join(TRACKERS)}"
            )
        object.__setattr__(self, "report_to", list(dict.fromkeys(trackers)))
        if self.distributed == "fsdp" and self.checkpoint_offload == "on":
            # The offloading checkpoint copies each layer's input on a side stream while FSDP2 all-gathers the
            # next layer's shards on its own streams; the two were never run together.
            raise KieloError(
                "training.checkpoint_offload does not run with training.distributed fsdp",
                "set --training.checkpoint_offload off or auto (FSDP already frees most of each GPU's memory), or use ddp",
            )


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = opt(256, "Longest generated answer, in tokens.")
    temperature: float = opt(0.0, "Sampling temperature; 0 = greedy decoding.")
    top_p: float = opt(1.0, "Nucleus sampling threshold.")
    top_k: int = opt(0, "Sample from the k most likely tokens (0 = off).")
    repetition_penalty: float = opt(1.0, "Penalty for repeated tokens (1 = off).")
    seed: int = opt(0, "Seed for sampling.")
    batch_size: int = opt(8, "Prompts generated together (left-padded).")
    stop: Any = opt(
        None,
        "Stop strings: an answer ends where one appears, the string itself cut off (a list: [a, b], a,b or [] for none; "
        "one string is one stop; quote one that starts with [ inside a list: ['[/INST]']).",
        factory=list,
    )

    def __post_init__(self) -> None:
        stop = as_list(self.stop)
        object.__setattr__(self, "stop", [stop] if isinstance(stop, str) else stop)
        if not (isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop)):
            raise KieloError(f"generation.stop = {self.stop!r} is not valid", "give a list of non-empty strings")
        _positive(self.max_new_tokens, "generation.max_new_tokens")
        _positive(self.temperature, "generation.temperature", allow_zero=True)
        _positive(self.batch_size, "generation.batch_size")
        if not 0 < self.top_p <= 1:
            raise KieloError(f"generation.top_p = {self.top_p} is out of range", "use a value in (0, 1]")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = opt(None, "Base model.", factory=ModelConfig)
    quantization: QuantizationConfig = opt(None, "How the frozen base is stored.", factory=QuantizationConfig)
    lora: LoraConfig = opt(None, "The trained adapter.", factory=LoraConfig)
    data: DataConfig = opt(None, "Instruction data and formatting.", factory=DataConfig)
    training: TrainingConfig = opt(None, "Optimization, evaluation and checkpoints.", factory=TrainingConfig)
    generation: GenerationConfig = opt(None, "Defaults for commands that generate.", factory=GenerationConfig)
    output_dir: str = opt("runs/kielo", "Where outputs are written.")


SECTIONS: dict[str, type] = {
    f.name: f.default_factory
    for f in fields(Config)
    if f.default_factory is not MISSING  # type: ignore[misc]
}
