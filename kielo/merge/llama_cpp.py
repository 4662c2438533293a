"""llama.cpp's own tools, run as programs: the converter, the quantizer, the tokenizer, greedy generation and
perplexity.

PyPI has no wheel with ``llama-quantize`` (``xllamacpp`` and ``llama-cpp-python`` wheels carry a library, not
the tools), so ``make llama-cpp`` builds the llama.cpp vendored in the ``llama-cpp-python`` sdist once into
``~/.cache/kielo/llama.cpp/<version>`` (``src/`` holds the sources and ``convert_hf_to_gguf.py``, ``build/bin``
the programs). ``KIELO_LLAMA_CPP`` points at another build: that layout, or a llama.cpp checkout with its
programs in ``build/bin``; ``off`` leaves llama.cpp out.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kielo.errors import KieloError

log = logging.getLogger(__name__)

VERSION = "0.3.36"  # the llama-cpp-python sdist `make llama-cpp` builds (LLAMA_CPP_VERSION in the Makefile)
ENV = "KIELO_LLAMA_CPP"
TOOLS = ("llama-simple", "llama-tokenize", "llama-quantize", "llama-perplexity")
# kielo's names for llama-quantize's types.
QUANT_TYPES = {"q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q8_0": "Q8_0"}
TIMEOUT_S = 3600  # a 7B model's conversion or quantization on a slow disk stays well within this


@dataclass(frozen=True)
class LlamaCpp:
    """A llama.cpp build: its source folder (the converter and gguf-py) and its programs."""

    source: Path
    bin: Path

    def tool(self, name: str) -> Path:
        return self.bin / name

    @property
    def converter(self) -> Path:
        return self.source / "convert_hf_to_gguf.py"


def default_dir() -> Path:
    """Where ``make llama-cpp`` builds: ``$KIELO_CACHE/llama.cpp/<version>`` (``~/.cache/kielo`` by default)."""
    from kielo.model.default import cache_root

    return cache_root() / "llama.cpp" / VERSION


def _layout(folder: Path) -> LlamaCpp | None:
    for source in (folder / "src", folder):
        build = LlamaCpp(source, folder / "build" / "bin")
        if build.converter.is_file() and all(build.tool(t).is_file() for t in TOOLS):
            return build
    return None


def find_llama_cpp() -> LlamaCpp | None:
    """The llama.cpp build named by ``KIELO_LLAMA_CPP``, else the one ``make llama-cpp`` made; None when neither.

    ``KIELO_LLAMA_CPP=off`` leaves llama.cpp out (kielo's writer and transformers' reader, as without it); one
    that holds no complete build is a mistake, not an absence: it raises.
    """
    named = os.environ.get(ENV)
    if named == "off":
        return None
    if named:
        found = _layout(Path(named).expanduser())
        if found is None:
            raise KieloError(
                f"{ENV}={named} holds no llama.cpp build (convert_hf_to_gguf.py and build/bin/{{{','.join(TOOLS)}}})",
                f"build it with `make llama-cpp LLAMA_CPP_DIR={named}`, or unset {ENV}",
            )
        return found
    return _layout(default_dir())


def absent_note() -> str:
    """One line for reports and logs when llama.cpp is not there."""
    return f"llama.cpp not found (`make llama-cpp` builds it into {default_dir()}, or set {ENV})"


def _run(cmd: list, what: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    log.debug("running %s", " ".join(map(str, cmd)))
    try:
        done = subprocess.run(
            [str(c) for c in cmd], input=stdin, capture_output=True, text=True, timeout=TIMEOUT_S, encoding="utf-8", errors="replace"
        )
    except subprocess.TimeoutExpired:
        raise KieloError(f"llama.cpp's {what} ran over {TIMEOUT_S} s", "re-run with --debug and report it") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise KieloError(f"llama.cpp's {what} failed (exit {done.returncode}):\n{tail}", "re-run with --debug and report it")
    return done


def convert(ll: LlamaCpp, hf_dir: Path, out: Path, outtype: str) -> None:
    """``convert_hf_to_gguf.py`` on an HF folder; ``outtype`` f32, f16, bf16 or q8_0.

    It runs in this Python (torch and transformers are here) with the gguf-py of the same llama.cpp, which it
    puts on its own path: converter and format library always match.
    """
    _run([sys.executable, ll.converter, hf_dir, "--outfile", out, "--outtype", outtype], "converter (convert_hf_to_gguf.py)")


def quantize(ll: LlamaCpp, source: Path, out: Path, qtype: str) -> None:
    """``llama-quantize`` from a float GGUF to one of :data:`QUANT_TYPES`."""
    _run([ll.tool("llama-quantize"), source, out, QUANT_TYPES[qtype]], f"llama-quantize ({qtype})")


def tokenize(ll: LlamaCpp, gguf: Path, text: str, bos: bool = False, special: bool = True) -> list[int]:
    """The ids llama.cpp's tokenizer gives ``text`` (special tokens in the text parsed, as HF tokenizers do,
    unless ``special`` is False: then as llama-perplexity reads a file)."""
    # --no-escape: the text goes in byte for byte (a literal "\n" in it stays two characters).
    cmd = [ll.tool("llama-tokenize"), "-m", gguf, "--stdin", "--ids", "--no-escape"]
    cmd += [] if bos else ["--no-bos"]
    done = _run(cmd if special else [*cmd, "--no-parse-special"], "llama-tokenize", stdin=text)
    line = next(ln for ln in reversed(done.stdout.splitlines()) if ln.startswith("["))
    return [int(x) for x in line.strip("[]").split(",") if x.strip()]


@dataclass(frozen=True)
class Generated:
    text: str  # the prompt's pieces then the answer's, as llama-simple prints them
    tokens: int  # answer tokens before the end
    stopped: bool  # ended at an end-of-generation token, not at the limit


def generate(ll: LlamaCpp, gguf: Path, prompt: str, max_new_tokens: int) -> Generated:
    """Greedy generation with ``llama-simple`` (it adds BOS when the file says so and parses special tokens)."""
    done = _run([ll.tool("llama-simple"), "-m", gguf, "-n", max_new_tokens, prompt], "llama-simple")
    found = re.search(r"decoded (\d+) tokens", done.stderr)
    if found is None:
        raise KieloError(f"llama-simple printed no token count:\n{done.stderr[-500:]}", "re-run with --debug and report it")
    n = int(found.group(1))
    # llama-simple stops before printing an end token, else after max_new_tokens; it ends with one newline.
    return Generated(done.stdout.removesuffix("\n"), n, n < max_new_tokens)


def _final_perplexity(log: str) -> float | None:
    """The final estimate, or the running one after the last chunk (the same number), from llama-perplexity's log."""
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", log)
    if found:
        return float(found.group(1))
    chunks = re.search(r"perplexity over (\d+) chunks", log)
    running = re.findall(r"\[(\d+)\]([0-9.]+),", log)
    if chunks and running and running[-1][0] == chunks.group(1):
        return float(running[-1][1])
    return None


def perplexity(ll: LlamaCpp, gguf: Path, text_file: Path, context: int, attempts: int = 8) -> float:
    """llama-perplexity's final estimate over ``text_file`` in chunks of ``context`` tokens (it scores the
    second half of each chunk)."""
    cmd = [ll.tool("llama-perplexity"), "-m", gguf, "-f", text_file, "-c", context, "-b", context]
    for _ in range(attempts):
        done = _run(cmd, "llama-perplexity")
        # llama.cpp logs from a background thread that exit does not wait for (llama.cpp issue 22142): now and
        # then the last lines are lost (on 2 busy cores, one run in four). The computation is deterministic, so
        # running it again is safe.
        log_text = done.stdout + done.stderr
        if "you need at least" in log_text:
            raise KieloError(
                f"llama-perplexity: {log_text[log_text.index('you need at least') :].splitlines()[0]}", "use more held-out text"
            )
        ppl = _final_perplexity(log_text)
        if ppl is not None:
            return ppl
    raise KieloError(
        f"llama-perplexity gave no estimate in {attempts} runs:\n{done.stderr[-500:]}", "re-run with --debug and report it"
    )
