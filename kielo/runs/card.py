"""A run's model card, ``README.md``: what the adapter is, how it was made, how it did, how to load it.

PEFT's ``save_pretrained`` writes an empty model-card template into every adapter folder; kielo replaces it,
in the run folder and in each checkpoint, with a card built from the folder's own files (the resolved
config, the adapter's config, the tokenizer's chat template) and the run's ``metrics.jsonl``. The card's
held-out section is filled in by ``kielo compare`` (:func:`record_held_out`): it sits between two HTML
comments, so a later comparison replaces exactly that section and nothing else.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path

import yaml

from kielo.errors import KieloError
from kielo.model.provenance import BaseProvenance, base_provenance
from kielo.report import markdown
from kielo.report.blocks import Block, KeyValues, Paragraph, Report, Section, Table
from kielo.resources import locate
from kielo.runs.card_use import usage_blocks
from kielo.runs.saved import ADAPTER_CONFIG, METRICS_FILE, SUMMARY_FILE, read_metrics, read_run_config
from kielo.runs.writes import write_text_atomic, writing

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
HELD_OUT_BEGIN = "<!-- kielo:held-out -->"
HELD_OUT_END = "<!-- /kielo:held-out -->"
# The config sections that are the run's hyperparameters (model is the base section's).
HYPERPARAMETER_SECTIONS = ("quantization", "lora", "data", "training", "generation")


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes; a file unchanged since the last call (same size and mtime) is not read
    again, so a run's checkpoints do not each re-read a large data set."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def curve_summary(records: list[dict]) -> dict[str, dict]:
    """First, last and lowest loss (each with its step) per split of metrics.jsonl records; skipped steps
    (a diverging step left out by ``on_divergence: skip``) are not the curve."""
    out = {}
    for split in ("train", "validation"):
        points = [r for r in records if r.get("split") == split and isinstance(r.get("loss"), int | float) and not r.get("skipped")]
        if points:
            best = min(points, key=lambda r: r["loss"])
            out[split] = {"first": points[0], "last": points[-1], "best": best, "points": len(points)}
    return out


def _value(v) -> str:
    if isinstance(v, list):
        return ", ".join(map(str, v)) if v else "[] (none)"
    return "—" if v is None else str(v)


def _licence_text(base: BaseProvenance) -> str:
    if not base.licence and not base.licence_name:
        return "see the base model's licence"
    name = base.licence_name or base.licence
    ident = f" (`{base.licence}`)" if base.licence and base.licence != name else ""
    return f"{name}{ident}" + (f", {base.licence_link}" if base.licence_link else "")


def _licence_paragraph(base: BaseProvenance) -> str:
    if not base.licence and not base.licence_name:
        text = (
            "The adapter modifies the base model, so its use is subject to the base model's licence; the files at hand "
            "do not name it: see the base model's licence."
        )
    else:
        text = f"The adapter modifies the base model, so its use is subject to the base model's licence: {_licence_text(base)}."
    if base.terms_files:
        text += " Beside the base's weights: " + ", ".join(f"`{f}`" for f in base.terms_files) + "."
    return text


def _base_section(config: dict, base: BaseProvenance) -> Section:
    q = config.get("quantization") or {}
    bits = q.get("bits", 4)
    double = ", double quantization" if q.get("double_quant") else ""
    quant = (
        f"4-bit {q.get('quant_type', 'nf4')}{double}, compute {q.get('compute_dtype')}"
        if bits == 4
        else "8-bit (LLM.int8)"
        if bits == 8
        else f"none (plain LoRA), {q.get('compute_dtype')}"
    )
    items = [("model", f"`{base.name}`"), ("loaded from", f"`{base.path}` ({base.origin})" if base.origin else f"`{base.path}`")]
    if base.hub_id:
        items.append(("hub repository", base.hub_id))
    items.append(("revision", base.revision or "unknown (not recorded by the files at hand)"))
    items += [("quantization while training", quant), ("licence", _licence_text(base))]
    return Section("Base model", [KeyValues(items)])


def _not_a_file(path: str | None, d: dict) -> str:
    """What the card says in place of a checksum for data that is not one file."""
    from kielo.data.sources import HUB_ID, is_disk_folder

    if path and is_disk_folder(Path(path).expanduser()):
        return "a save_to_disk folder"
    if path and HUB_ID.match(path.split(":")[0]) and not Path(path).exists():
        return f"hub dataset, revision {d.get('revision') or 'main'}"
    return "file not found"


def _data_section(config: dict, facts: dict) -> Section:
    d = config.get("data") or {}
    stats = facts.get("data") or {}
    table = Table(["split", "file", "examples", "trained on", "truncated", "sha256"], title="Files")

    def row(split: str, path: str | None, note: str = "") -> None:
        st = stats.get(split) or {}
        file = locate(path) if path else None
        digest = sha256_of(file) if file is not None and file.is_file() else _not_a_file(path, d)
        table.add([split, f"{path}{note}" if path else "—", st.get("total"), st.get("kept"), st.get("truncated"), digest])

    row("train", d.get("train"))
    if d.get("validation"):
        row("validation", d["validation"])
    elif d.get("validation_split"):
        seed = (config.get("training") or {}).get("seed")
        row("validation", d.get("train"), f" (split off: validation_split {d['validation_split']}, seed {seed})")
    if d.get("streaming"):
        table.notes.append("data.train was streamed: its rows were read as training reached them, so they are not counted here.")
    table.notes.append(
        f"examples: rows read; trained on: rows left after data.max_length {d.get('max_length')} "
        f"(overlong: {d.get('overlong')}); sha256 of the file's bytes when this card was written."
    )
    return Section("Data", [table])


def _template_section(folder: Path, config: dict, facts: dict) -> Section:
    d = config.get("data") or {}
    items = [("data.template", f"{d.get('template')} (resolved: {facts.get('template') or 'unknown'})")]
    items.append(("end token", f"`{facts['end_token']}`" if facts.get("end_token") else "unknown"))
    items.append(("system prompt", _value(d.get("system_prompt"))))
    blocks: list[Block] = [KeyValues(items)]
    template = _chat_template(folder)
    if template:
        blocks.append(Paragraph("The tokenizer saved here carries it as its `chat_template`:"))
        blocks.append(Paragraph(f"```jinja\n{template.strip()}\n```", only="markdown"))
    return Section("Prompt format", blocks)


def _chat_template(folder: Path) -> str | None:
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    tok_cfg = folder / "tokenizer_config.json"
    if tok_cfg.is_file():
        template = json.loads(tok_cfg.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def _hyperparameters_section(config: dict) -> Section:
    tables: list[Block] = []
    for name in HYPERPARAMETER_SECTIONS:
        values = config.get(name) or {}
        tables.append(Table(["setting", "value"], [[f"{name}.{k}", _value(v)] for k, v in values.items()], title=name))
    intro = Paragraph("The resolved config the run trained with (`kielo_config.yaml` beside the adapter), every key:")
    return Section("Hyperparameters", [intro, *tables])


def _curve_section(records: list[dict], facts: dict, step: int | None, metrics_at: str) -> Section:
    curve = curve_summary(records)
    blocks: list[Block] = []
    trained = [r for r in records if r.get("split") == "train"]
    items = []
    if step is not None:
        items.append(("this checkpoint", f"step {step} of {facts.get('steps', '?')}"))
    elif trained:
        items.append(("steps", f"{trained[-1]['step']} of {facts.get('steps', trained[-1]['step'])}"))
    if trained and trained[-1].get("tokens") is not None:
        items.append(("tokens trained", f"{trained[-1]['tokens']:,}"))
    skipped = [r["step"] for r in trained if r.get("skipped")]
    if skipped:
        items.append(("skipped steps (diverging)", ", ".join(map(str, skipped))))
    if items:
        blocks.append(KeyValues(items))
    if curve:
        table = Table(["loss", "first", "last", "best", "points"])
        for split, c in curve.items():
            table.add([split, *(f"{c[k]['loss']:.4f} (step {c[k]['step']})" for k in ("first", "last", "best")), c["points"]])
        table.notes.append(f"The whole curve (learning rate, gradient norm, tokens/s per step): {metrics_at}.")
        blocks.append(table)
    else:
        blocks.append(Paragraph("No training metrics were found for this adapter."))
    return Section("Training curve", blocks)


def _held_out_placeholder(location: str) -> list[Block]:
    return [
        Paragraph(
            f"Not measured yet. `kielo compare --model {location} --data HELD_OUT.jsonl` compares the base with and "
            "without this adapter on the same data and settings, and writes its numbers here."
        )
    ]


def held_out_markdown(blocks: list[Block]) -> str:
    """The held-out section's body between its markers, as the card holds it."""
    inner = "\n\n".join(markdown.block(b, 3, "plots") for b in blocks)
    return f"{HELD_OUT_BEGIN}\n\n{inner}\n\n{HELD_OUT_END}"


def _front_matter(base: BaseProvenance) -> str:
    meta = {"library_name": "peft", "pipeline_tag": "text-generation", "tags": ["kielo", "lora", "peft"]}
    if base.hub_id:
        meta["base_model"] = base.hub_id
    if base.licence:
        meta["license"] = base.licence
    if base.licence_name:
        meta["license_name"] = base.licence_name
    if base.licence_link:
        meta["license_link"] = base.licence_link
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n"


def render_card(folder: Path, run_dir: Path, facts: dict, location: str, step: int | None, held_out: str | None = None) -> str:
    """The card of the adapter in ``folder`` as Markdown with its front matter.

    ``run_dir``: the run folder whose metrics.jsonl holds the curve (``folder`` itself, or the run of a
    checkpoint); ``facts``: what only the run knows (``template``, ``end_token``, ``data``: the encoding
    report, ``steps``: the steps planned); ``location``: the adapter's path as users name it (``folder``
    may be a temporary folder about to be moved there); ``step``: a checkpoint's step (the curve stops
    there); ``held_out``: the held-out section's body (:func:`held_out_markdown`), else a placeholder."""
    folder, run_dir = Path(folder), Path(run_dir)
    config = read_run_config(folder)
    if config is None:
        raise KieloError(f"{folder} has no kielo_config.yaml to build a model card from", "write the card from a kielo run folder")
    adapter = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    model_name = (config.get("model") or {}).get("name", "")
    base = base_provenance(model_name, adapter.get("base_model_name_or_path"))
    records = [r for r in read_metrics(run_dir) if step is None or r.get("step", 0) <= step]
    lora = config.get("lora") or {}
    what = f"LoRA adapter (rank {lora.get('r')}, alpha {lora.get('alpha')}) in PEFT's format"
    intro = Paragraph(
        f"A {what}, trained by kielo on `{model_name}`"
        + (f" and saved at step {step} of the run in `{run_dir}`" if step is not None else "")
        + ". Everything below comes from the files in this folder and the run's metrics."
    )
    held = held_out or held_out_markdown(_held_out_placeholder(location))
    report = Report(
        f"{Path(location).name or location}: LoRA adapter for {model_name}",
        [
            intro,
            _base_section(config, base),
            _data_section(config, facts),
            _template_section(folder, config, facts),
            _hyperparameters_section(config),
            _curve_section(records, facts, step, f"`{run_dir / METRICS_FILE}`"),
            Section("Held-out evaluation", [Paragraph(held, only="markdown")]),
            Section("How to use it", usage_blocks(config, base, location)),
            Section("Licence", [Paragraph(_licence_paragraph(base))]),
        ],
    )
    return _front_matter(base) + markdown.render(report)


def write_card(folder: Path, run_dir: Path, facts: dict, location: str | Path | None = None, step: int | None = None) -> Path:
    """Replace ``folder``'s README.md (PEFT's template) with the adapter's card, in one rename."""
    folder = Path(folder)
    text = render_card(folder, run_dir, facts, str(location or folder), step)
    with writing(folder, f"the model card {CARD_FILE}"):
        write_text_atomic(folder / CARD_FILE, text)
    return folder / CARD_FILE


def splice_held_out(card: str, body: str) -> str | None:
    """``card`` with its held-out section replaced by ``body`` (from :func:`held_out_markdown`); None when
    the card has no such section (PEFT's template, or a card edited by hand)."""
    start, end = card.find(HELD_OUT_BEGIN), card.find(HELD_OUT_END)
    if start < 0 or end < start:
        return None
    return card[:start] + body + card[end + len(HELD_OUT_END) :]


def _run_of(folder: Path) -> tuple[Path, int | None]:
    """The run folder holding ``folder``'s metrics and, for a checkpoint (``checkpoints/step-N``), its step."""
    from kielo.runs.folder import STEP_DIR

    m = STEP_DIR.match(folder.name)
    if m and folder.parent.name == "checkpoints":
        return folder.parent.parent, int(m.group(1))
    return folder, None


def update_held_out(folder: Path, blocks: list[Block]) -> Path | None:
    """Put ``blocks`` into the held-out section of the card of the kielo adapter in ``folder``; a folder
    whose README is not a kielo card yet gets a whole card. Returns the card, None for a folder that is no
    kielo run (a plain PEFT adapter is left as it is)."""
    folder = Path(folder)
    if read_run_config(folder) is None or not (folder / ADAPTER_CONFIG).is_file():
        return None
    body = held_out_markdown(blocks)
    path = folder / CARD_FILE
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    text = splice_held_out(old, body)
    if text is None:
        run_dir, step = _run_of(folder)
        summary_file = run_dir / SUMMARY_FILE
        summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else {}
        text = render_card(folder, run_dir, summary, str(folder), step, held_out=body)
    with writing(folder, f"the model card {CARD_FILE}"):
        write_text_atomic(path, text)
    return path
