"""`kielo evaluate` / `kielo compare` on tiny models: the loss equals plain transformers + peft, reports are
complete and self-contained, bad adapters fail clearly."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
import yaml
from conftest import ROWS, tiny_config

from kielo.cli import main
from kielo.config.load import load_config
from kielo.errors import KieloError
from kielo.evaluate.run import compare, evaluate
from kielo.train.trainer import train

EVAL_ROWS = [
    {"id": "re-1", "instruction": "Poista merkinnät: <script>alert(1)</script>", "output": "<b>alert</b>", "task": "rewrite"},
    {"id": "qa-1", "instruction": "Mikä on Suomen pääkaupunki?", "output": "Helsinki.", "task": "open_qa"},
    {"id": "ar-1", "instruction": "Paljonko on 2 + 3?", "output": "2 + 3 = 5. Vastaus: 5.", "task": "arithmetic", "answer": 5},
    {
        "id": "cl-1",
        "instruction": "Luokittele sävy.",
        "input": "Kissa istuu ikkunalla.",
        "output": "neutraali",
        "task": "classification",
        "labels": ["positiivinen", "negatiivinen", "neutraali"],
    },
    {"id": "li-1", "instruction": "Luettele kolme järveä.", "output": "- Saimaa\n- Päijänne\n- Inari", "task": "list"},
    {
        "id": "tr-1",
        "instruction": "Käännä englanniksi.",
        "input": "Hyvää huomenta!",
        "output": "Good morning!",
        "task": "translation_fi_en",
        "answer_lang": "en",
    },
    {
        "id": "fo-1",
        "instruction": "Kerro yhdellä lauseella, mikä on kissa.",
        "output": "Kissa on eläin.",
        "task": "format",
        "constraint": {"type": "one_sentence"},
    },
]


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    """Two tiny adapters on tiny_llama (the first with a checkpoint at step 2) and the evaluation file."""
    root = tmp_path_factory.mktemp("eval")
    data = write_jsonl(root / "train.jsonl", ROWS * 4)
    for seed in (1, 2):
        train(
            tiny_config(
                tiny_llama,
                data,
                root / f"run{seed}",
                training={"seed": seed, "save_every": 2 if seed == 1 else 0},
                quantization={"bits": 0},
            ),
            progress=False,
        )
    return root / "run1", root / "run2", write_jsonl(root / "eval.jsonl", EVAL_ROWS)


@pytest.fixture(scope="module")
def gemma_run(tiny_gemma, tmp_path_factory):
    """An adapter on tiny_gemma (which has a chat template) trained with the built-in template."""
    root = tmp_path_factory.mktemp("gemma")
    train(
        tiny_config(
            tiny_gemma,
            write_jsonl(root / "t.jsonl", ROWS * 2),
            root / "builtin-run",
            training={"max_steps": 1},
            quantization={"bits": 0},
            data={"template": "builtin"},
        ),
        progress=False,
    )
    return root / "builtin-run"


def plain_model(model_dir, adapter_dir, other_adapter_dir):
    """Plain transformers + peft: the 4-bit NF4 base with two adapters, ``"trained"`` and ``"other"``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    q = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32
    )
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, quantization_config=q, device_map={"": "cpu"})
    model = PeftModel.from_pretrained(base, str(adapter_dir), adapter_name="trained").eval()
    model.load_adapter(str(other_adapter_dir), adapter_name="other")
    return model, AutoTokenizer.from_pretrained(str(adapter_dir))  # saved with the training prompt format


@torch.no_grad()
def plain_loss(model, tok, rows, shift: int = 0) -> float:
    """Mean token cross-entropy over the answer tokens (answer + end token), computed from full logits."""
    total, count = 0.0, 0
    for r in rows:
        user = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        prompt = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tok(r["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p_ids + a_ids])
        logits = model(input_ids=ids).logits[0].float()
        start = len(p_ids) - 1 + shift  # logits at position t predict token t + 1
        pred = logits[start : start + len(a_ids)]
        target = ids[0, len(p_ids) : len(p_ids) + len(pred)]
        total += float(torch.nn.functional.cross_entropy(pred, target, reduction="sum"))
        count += len(target)
    return total / count


def test_loss_equals_plain_transformers_peft_and_wrong_inputs_differ(tiny_llama, runs, tmp_path):
    run1, run2, data = runs
    cfg = load_config(overrides={"model": str(tiny_llama), "quantization.bits": 4})
    report = evaluate(cfg, data, adapter=str(run1), generate=0, bootstrap=100, output_dir=tmp_path / "ev", progress=False)
    ours = report["result"]["overall"]["loss"]
    assert ours["examples"] == len(EVAL_ROWS)
    model, tok = plain_model(tiny_llama, run1, run2)
    assert ours["loss"] == pytest.approx(plain_loss(model, tok, EVAL_ROWS), abs=1e-4)
    # The check can fail: an off-by-one in the labels, or another adapter, gives another number.
    assert abs(plain_loss(model, tok, EVAL_ROWS, shift=1) - ours["loss"]) > 1e-3  # 10x the tolerance
    model.set_adapter("other")
    assert abs(plain_loss(model, tok, EVAL_ROWS) - ours["loss"]) > 1e-3
    # Adapter analysis on a 4-bit base: the dequantized weight norm is close to the original fp32 weight's.
    from safetensors.torch import load_file

    original = load_file(str(tiny_llama / "model.safetensors"))
    row = next(r for r in report["adapter_analysis"]["modules"] if r["module"].endswith("layers.0.self_attn.q_proj"))
    w = original["model.layers.0.self_attn.q_proj.weight"]
    assert row["weight_norm"] == pytest.approx(float(w.norm()), rel=0.05)
    lora = load_file(str(run1 / "adapter_model.safetensors"))
    a = next(v for k, v in lora.items() if "layers.0.self_attn.q_proj.lora_A" in k)
    b = next(v for k, v in lora.items() if "layers.0.self_attn.q_proj.lora_B" in k)
    assert row["update_norm"] == pytest.approx(float((2.0 * b @ a).norm()), rel=1e-4)  # scale = alpha/r = 8/4
    assert len(report["adapter_analysis"]["modules"]) == 14  # 7 projections x 2 layers
    md = (tmp_path / "ev" / "report.md").read_text()
    assert "loss (response tokens)" in md and "Adapter run1" in md


def test_compare_through_the_cli_writes_a_self_contained_report(tiny_llama, runs, tmp_path, capsys):
    run1, run2, data = runs
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--model",
            str(tiny_llama),
            "--adapter",
            str(run1),
            "--adapter",
            str(run2),
            "--data",
            str(data),
            "--generate",
            "6",
            "--generation.max_new_tokens",
            "8",
            "--quantization.bits",
            "0",
            "--bootstrap",
            "200",
            "--checkpoints",
            "--output_dir",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "run1 - base: loss" in printed and "report.html" in printed
    for name in (
        "report.json",
        "report.md",
        "report.html",
        "kielo_config.yaml",
        "generations/base.jsonl",
        "generations/run1.jsonl",
        "plots/metric_deltas.png",
        "plots/per_task.png",
        "plots/loss_differences.png",
        "plots/learning_curve.png",
        "plots/adapter_run1_heatmap.png",
        "plots/adapter_run2_spectrum.png",
    ):
        assert (out / name).is_file(), name
    assert (out / "plots/per_task.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["base", "run1", "run2"]
    summary = report["summary"]
    assert set(summary["models"]) == {"base", "run1", "run2"} and summary["level"] == 0.95
    for key in ("loss", "chrf", "task_success", "end_token", "expected_language"):
        assert key in summary["models"]["run1"]
    d = summary["deltas"]["run1"]["loss"]
    assert d["low"] <= d["delta"] <= d["high"] and d["n"] == len(EVAL_ROWS)
    assert summary["models"]["run1"]["generated_examples"] == 6 and summary["models"]["base"]["loss_examples"] == 7
    assert len((out / "generations/run2.jsonl").read_text().splitlines()) == 6
    # Every generated task type is in the per-task deltas; the learning curve has base, checkpoint, final.
    assert set(report["deltas"]["run1"]["per_task"]) == {r["task"] for r in EVAL_ROWS}
    assert [p["step"] for p in report["learning_curve"]["run1"]["points"]] == [0, 2, 4]
    assert "run2" not in report["learning_curve"]  # no checkpoints
    html = (out / "report.html").read_text()
    for section in (
        "Summary",
        "Per task type",
        "Per-example loss",
        "Biggest wins and losses",
        "Adapter analysis",
        "Learning curve",
        "Generations",
        "Δ run1 [95% CI]",
    ):
        assert section in html, section
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) >= 8 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', html))
    assert "<link" not in html and "<script" not in html
    assert "Luettele kolme järveä." in html  # prompts shown beside the answers
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # text from data is escaped
    md = (out / "report.md").read_text()
    assert "### Summary" in md and "Adapter run2: modules changed most" in md
    # Only the translation row is tagged with its answer language: the other five generated rows are left out
    # of the language share (not assumed Finnish), and every output says so.
    left_out = "5 of 6 generated examples are left out of the language share"
    assert left_out in printed and left_out in md and left_out in html
    assert report["results"]["run1"]["overall"]["counts"]["expected_language"] == 1


def test_data_without_references_is_scored_without_them(tiny_llama, runs, tmp_path, capsys):
    run1, _, _ = runs
    data = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"instruction": "Mikä on Suomen pääkaupunki?", "task": "open_qa"},
            {
                "instruction": "Montako jalkaa kissalla on? Vastaa pelkällä luvulla.",
                "task": "format",
                "constraint": {"type": "number_only"},
            },
            {"messages": [{"role": "user", "content": "Hei!"}]},
        ],
    )
    code = main(
        [
            "evaluate",
            "--model",
            str(tiny_llama),
            "--adapter",
            str(run1),
            "--data",
            str(data),
            "--quantization.bits",
            "0",
            "--generation.max_new_tokens",
            "4",
            "--bootstrap",
            "50",
            "--output_dir",
            str(tmp_path / "o"),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "No example has a reference answer" in printed
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    o = report["result"]["overall"]
    assert o["loss"] is None and o["metrics"]["chrf"] is None and o["generated"] == 3
    assert o["metrics"]["end_token"] is not None and o["counts"]["task_success"] == 1  # the format check needs no reference
    left_out = "3 of 3 generated examples are left out of the language share"
    assert left_out in printed and left_out in (tmp_path / "o" / "report.md").read_text()
    assert o["metrics"]["expected_language"] is None and o["counts"]["expected_language"] == 0
    assert len((tmp_path / "o" / "generations.jsonl").read_text().splitlines()) == 3


def test_missing_and_mismatched_adapters_are_clear(tiny_llama, gemma_run, runs, tmp_path, capsys):
    run1, _, data = runs
    cfg = load_config(overrides={"model": str(tiny_llama), "quantization.bits": 0})
    with pytest.raises(KieloError, match="adapter .*nope does not exist"):
        compare(cfg, data, [str(run1), str(tmp_path / "nope")], output_dir=tmp_path / "o", progress=False)
    # An adapter trained on tiny_gemma has the same shapes as tiny_llama's layers: PEFT would load it silently.
    with pytest.raises(KieloError, match="was trained on .*gemma3_text.* not on this base .*llama") as err:
        evaluate(cfg, data, adapter=str(gemma_run), output_dir=tmp_path / "o", progress=False)
    assert "--model" in err.value.fix
    code = main(
        ["compare", "--model", str(tiny_llama), "--adapter", str(gemma_run), "--data", str(data), "--output_dir", str(tmp_path / "o")]
    )
    err_text = capsys.readouterr().err
    assert code == 2 and "was trained on" in err_text and "fix:" in err_text and "Traceback" not in err_text
    # The report never overwrites a training run's folder.
    with pytest.raises(KieloError, match="holds a training run"):
        evaluate(cfg, data, generate=0, output_dir=run1, progress=False)
    assert main(["evaluate", "--model", str(tiny_llama), "--data", str(data), "--generate", "2", "--no_generate"]) == 2


def test_adapter_is_evaluated_in_its_training_prompt_format(tiny_gemma, gemma_run, runs, tmp_path):
    """tiny_gemma has a chat template; an adapter trained with the built-in template is evaluated with that."""
    _, _, data = runs
    cfg = load_config(overrides={"model": str(tiny_gemma), "quantization.bits": 0})
    report = evaluate(cfg, data, adapter=str(gemma_run), generate=0, bootstrap=10, output_dir=tmp_path / "o", progress=False)
    assert report["model"]["template"] == "builtin"
    report = evaluate(cfg, data, generate=0, bootstrap=10, output_dir=tmp_path / "o2", progress=False)
    assert report["model"]["template"] == "chat"  # the base alone keeps the model's own format


def _evaluate_cli(args: list[str], out, capsys) -> tuple[dict, list[dict], str]:
    """`kielo evaluate` with ``args``: the report, its generations and what it printed."""
    code = main(["evaluate", *args, "--quantization.bits", "0", "--bootstrap", "20", "--output_dir", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    return json.loads((out / "report.json").read_text()), gens, printed


def test_a_run_is_evaluated_with_its_saved_generation_settings_unless_overridden(tiny_llama, runs, tmp_path, capsys):
    """A run folder saved max_new_tokens and stop strings; evaluate and compare generate with them, the command
    line wins key by key (even a value equal to the schema default, like `stop: []`), and the output says which."""
    _, _, data = runs
    train_rows = write_jsonl(tmp_path / "t.jsonl", ROWS * 2)
    run = tmp_path / "run"
    cfg = tiny_config(
        tiny_llama, train_rows, run, training={"max_steps": 1}, quantization={"bits": 0}, generation={"max_new_tokens": 6}
    )
    train(cfg, progress=False)

    # The run folder as the model: its max_new_tokens (6, not the default 256) bounds every answer.
    report, gens, printed = _evaluate_cli(["--model", str(run), "--data", str(data)], tmp_path / "o1", capsys)
    assert report["settings"]["generation"]["max_new_tokens"] == 6
    assert max(g["answer_tokens"] for g in gens) == 6
    assert "max_new_tokens=6" in printed and f"(from the run's config ({run}))" in printed
    assert report["settings"]["generation_source"]["from_runs"][:1] == ["max_new_tokens"]
    assert "from the run's config" in (tmp_path / "o1" / "report.md").read_text()

    # Save a stop string taken from an answer: the run as an adapter now stops there.
    long = max(gens, key=lambda g: len(g["generation"].strip()))["generation"]
    stop = long.strip()[len(long.strip()) // 2 :][:2]
    saved = yaml.safe_load((run / "kielo_config.yaml").read_text())
    saved["generation"]["stop"] = [stop]
    (run / "kielo_config.yaml").write_text(yaml.safe_dump(saved, allow_unicode=True))
    report, cut, printed = _evaluate_cli(
        ["--model", str(tiny_llama), "--adapter", str(run), "--data", str(data)], tmp_path / "o2", capsys
    )
    assert report["settings"]["generation"]["stop"] == [stop] and f"stop={[stop]!r}" in printed
    by_id = {g["id"]: g["generation"] for g in gens}
    stopped = [g for g in cut if stop in by_id[g["id"]]]
    assert stopped and all(stop not in g["generation"] and by_id[g["id"]].startswith(g["generation"]) for g in stopped)

    # The command line wins: no stop strings (the schema default) and 3 new tokens.
    args = ["--model", str(tiny_llama), "--adapter", str(run), "--data", str(data), "--generation.stop", "[]"]
    report, gens, printed = _evaluate_cli([*args, "--generation.max_new_tokens", "3"], tmp_path / "o3", capsys)
    g = report["settings"]["generation"]
    assert g["stop"] == [] and g["max_new_tokens"] == 3 and max(x["answer_tokens"] for x in gens) == 3
    assert "max_new_tokens, stop from the command line, the rest from the run's config" in printed

    # Two runs that saved different settings can't share one; choosing the key settles it.
    other = tmp_path / "other"
    train(replace(cfg, output_dir=str(other), generation=replace(cfg.generation, max_new_tokens=4, stop=[stop])), progress=False)
    base = load_config(overrides={"model": str(tiny_llama), "quantization.bits": 0})
    with pytest.raises(KieloError, match="saved different generation.max_new_tokens") as err:
        compare(base, data, [str(run), str(other)], generate=2, output_dir=tmp_path / "c", progress=False, chosen_generation=[])
    assert "--generation.max_new_tokens" in err.value.fix
    report = compare(
        base,
        data,
        [str(run), str(other)],
        generate=2,
        bootstrap=10,
        output_dir=tmp_path / "c",
        progress=False,
        chosen_generation=["max_new_tokens"],
    )
    assert report["settings"]["generation"]["max_new_tokens"] == 256 and report["settings"]["generation"]["stop"] == [stop]


def test_an_explicit_template_wins_over_the_run_folder_s(tiny_gemma, gemma_run, runs, tmp_path):
    """A run folder given as the model brings its prompt format (builtin), unless one is asked for."""
    _, _, data = runs
    cfg = load_config(overrides={"model": str(gemma_run), "quantization.bits": 0})
    report = evaluate(cfg, data, generate=0, bootstrap=10, output_dir=tmp_path / "o", progress=False)
    assert report["model"]["template"] == "builtin"
    assert report["settings"]["generation_source"]["template_from"] == "the run's config"
    cfg = load_config(overrides={"model": str(gemma_run), "quantization.bits": 0, "data.template": "chat"})
    report = evaluate(cfg, data, generate=0, bootstrap=10, output_dir=tmp_path / "o2", progress=False)
    assert report["model"]["template"] == "chat"
    assert report["settings"]["generation_source"]["template_from"] == "the given config"
