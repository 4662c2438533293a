"""Check GGUF files in llama.cpp itself: its tokenizer, its greedy answers, where it stops, its held-out loss.

The lossless file (the merged weights in their own dtype) must reproduce the merged model: llama.cpp's
tokenizer gives the HF tokenizer's ids on the sample texts, and its greedy answers to the sample prompts are
the merged model's, stopping where the merged model stopped. A quantized file can't be held to the same
tokens, so each one is measured against the lossless file in llama.cpp: held-out loss (llama-perplexity on
held-out conversations) and the share of held-out prompts whose answer ends with an end token before the
limit. A type that raises the loss or loses the end token by more than the margins below "breaks the model":
the merge report's verdict says so.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

from kielo.merge.llama_cpp import LlamaCpp, generate, perplexity, tokenize

log = logging.getLogger(__name__)

# Margins against the lossless file. Quantization to 4-5 bits usually costs a few hundredths of a nat on
# multi-billion-parameter models; 0.1 nats (perplexity up 10.5%) is well past that and flags a type that
# changes what the model says. An end-token rate 10 points lower means one answer in ten now runs to the
# limit: the "talks forever" failure users meet in Ollama.
MAX_LOSS_INCREASE = 0.1
MAX_END_RATE_DROP = 0.10
# llama.cpp's answers may part from the merged model's where its two best tokens are within 2x this (in
# logits): llama.cpp keeps its K/V cache in f16, which moves logits by hundredths, not tenths.
LLAMA_CPP_TIE = 0.05
END_PROMPTS = 16  # held-out prompts for the end-token rate
END_MAX_NEW_TOKENS = 96  # as kielo evaluate's default answer length
MAX_CONTEXT = 512  # llama-perplexity chunk; smaller when the held-out text is short


def adds_bos(path: Path) -> bool:
    """Whether llama.cpp puts BOS in front of text itself (the file's ``tokenizer.ggml.add_bos_token``)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("tokenizer.ggml.add_bos_token")
    return bool(field is not None and field.contents())


def prompt_text(tokenizer, ids: list[int], strip_bos: bool) -> str:
    """Prompt ids as the text llama.cpp is given: without the leading BOS where llama.cpp adds it itself (else
    the BOS stays in the text, and llama.cpp parses it as the special token)."""
    if strip_bos and ids and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id:
        ids = ids[1:]
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def check_tokenizer(ll: LlamaCpp, path: Path, tokenizer, texts: list[str]) -> dict:
    """Whether llama-tokenize gives the HF tokenizer's ids for every text (special tokens parsed in both)."""
    same, first = 0, None
    for text in texts:
        want = tokenizer(text, add_special_tokens=False)["input_ids"]
        got = tokenize(ll, path, text)
        if got == want:
            same += 1
        elif first is None:
            k = next((j for j, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
            first = {"text": text[:80], "position": k, "hf": want[k : k + 5], "llama_cpp": got[k : k + 5]}
    result = {"texts": len(texts), "identical_ids": same, "passed": same == len(texts)}
    if first:
        result["first_mismatch"] = first
    return result


def _near_tie(tokenizer, reference, i: int, got, prompt_text_printed: str, content: list[int], stopped: bool, end: int) -> bool:
    """Whether llama.cpp's answer parts from the merged model's at a near-tie of the merged model's own logits
    (both tokens within ``2 * LLAMA_CPP_TIE``): llama.cpp computes in its own kernels and order."""
    if not got.text.startswith(prompt_text_printed):
        return False
    got_ids = tokenizer(got.text[len(prompt_text_printed) :], add_special_tokens=False)["input_ids"]
    got_ids += [end] if got.stopped else []
    want = content + ([end] if stopped else [])
    k = next((j for j, (a, b) in enumerate(zip(got_ids, want, strict=False)) if a != b), None)
    if k is None:
        return False  # the shorter one ran to its limit: not a choice between two tokens
    row = reference.logits[i][reference.prompt_lengths[i] - 1 + k].float()
    return float(row[want[k]] - row[got_ids[k]]) <= 2 * LLAMA_CPP_TIE


def check_greedy(ll: LlamaCpp, path: Path, tokenizer, reference, end_ids: set[int], end: int) -> dict:
    """llama.cpp's greedy answers to the reference prompts against the merged model's, and where both stop.

    Text is compared, not ids: llama-simple prints pieces. The prompt is first tokenized by llama.cpp (with
    BOS) and must give the reference's prompt ids, so the answers start from the same tokens. An answer that
    parts at a near-tie of the merged model's logits counts as a near-tie, not a failure.
    """
    identical = prompts_same = stops_same = near_ties = 0
    first, strip_bos = None, adds_bos(path)
    for i, seq in enumerate(reference.sequences):
        start = reference.prompt_lengths[i]
        prompt, answer = seq[:start], reference.answer(i)
        stopped = bool(answer) and answer[-1] in end_ids
        content = answer[:-1] if stopped else answer
        text = prompt_text(tokenizer, prompt, strip_bos)
        prompts_same += tokenize(ll, path, text, bos=True) == prompt
        got = generate(ll, path, text, len(answer))
        printed = tokenizer.decode(prompt, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        want = tokenizer.decode(prompt + content, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        stops_same += got.stopped == stopped
        if got.text == want and got.stopped == stopped:
            identical += 1
            continue
        if reference.logits and _near_tie(tokenizer, reference, i, got, printed, content, stopped, end):
            near_ties += 1
        if first is None:
            k = next((j for j, (a, b) in enumerate(zip(got.text, want, strict=False)) if a != b), min(len(got.text), len(want)))
            first = {"sequence": i, "merged": want[k : k + 40], "llama_cpp": got.text[k : k + 40], "stopped": [stopped, got.stopped]}
    n = len(reference.sequences)
    result = {
        "sequences": n,
        "identical_prompt_ids": prompts_same,
        "identical_answers": identical,
        "near_ties": near_ties,
        "same_stop": stops_same,
        "merged_stopped": sum(bool(reference.answer(i)) and reference.answer(i)[-1] in end_ids for i in range(n)),
        "passed": identical + near_ties == n and prompts_same == n,
    }
    if first:
        result["first_difference"] = first
    return result


def held_out_text(ll: LlamaCpp, path: Path, texts: list[str], tokenizer, folder: Path) -> tuple[Path, int]:
    """Held-out conversations in one file for llama-perplexity, and the chunk size its length allows.

    llama-perplexity reads special tokens' text as plain characters, so their text (BOS, the end token, chat
    markers) is left out: the loss is over the conversations' words and the template's plain text.
    """
    body = "\n\n".join(texts)
    for special in sorted(set(tokenizer.all_special_tokens), key=len, reverse=True):
        body = body.replace(special, "")
    out = folder / "held_out.txt"
    out.write_text(body, encoding="utf-8")
    n = len(tokenize(ll, path, body, bos=True, special=False))
    # llama-perplexity needs two chunks' worth of tokens (-1: its file reading may drop a final newline's token)
    return out, max(8, min(MAX_CONTEXT, n // 2 - 1))


def quality(ll: LlamaCpp, path: Path, text_file: Path, context: int, prompts: list[str]) -> dict:
    """Held-out loss (log of llama-perplexity's estimate) and end-token rate of one file."""
    ppl = perplexity(ll, path, text_file, context)
    stopped = sum(generate(ll, path, p, END_MAX_NEW_TOKENS).stopped for p in prompts)
    return {
        "loss": math.log(ppl),
        "perplexity": ppl,
        "end_token_rate": stopped / max(len(prompts), 1),
        "prompts": len(prompts),
        "context": context,
    }


def judge(reference: dict, q: dict) -> dict:
    """A quantized file's numbers against the lossless file's: the changes and whether they break the model."""
    loss_change = q["loss"] - reference["loss"]
    rate_change = q["end_token_rate"] - reference["end_token_rate"]
    problems = []
    if loss_change > MAX_LOSS_INCREASE:
        problems.append(f"held-out loss {loss_change:+.3f} nats (at most +{MAX_LOSS_INCREASE:g})")
    if rate_change < -MAX_END_RATE_DROP:
        now, before = 100 * q["end_token_rate"], 100 * reference["end_token_rate"]
        problems.append(f"end token reached on {now:.0f}% of held-out prompts against {before:.0f}%")
    return {"loss_change": loss_change, "end_token_rate_change": rate_change, "passed": not problems, "problems": problems}


def measure_files(ll: LlamaCpp, lossless: Path, quantized: dict[str, Path], texts: list[str], prompts: list[str], tokenizer) -> dict:
    """Quality of the lossless file and of each quantized one, each judged against the lossless file."""
    with tempfile.TemporaryDirectory(prefix="kielo-ppl-") as tmp:
        text_file, context = held_out_text(ll, lossless, texts, tokenizer, Path(tmp))
        log.info("llama.cpp: held-out loss and end-token rate of %s", lossless.name)
        base = quality(ll, lossless, text_file, context, prompts)
        out = {"lossless": base}
        for kind, path in quantized.items():
            log.info("llama.cpp: held-out loss and end-token rate of %s", path.name)
            q = quality(ll, path, text_file, context, prompts)
            q.update(judge(base, q))
            if not q["passed"]:
                log.warning("%s breaks the model: %s", kind, "; ".join(q["problems"]))
            out[kind] = q
    return out
