"""The interactive chat: its state in-process, and the real command driven through a pseudo-terminal."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from kielo.config.load import load_config
from kielo.prompt.chat import PROMPT, Chat, run_chat
from kielo.prompt.run import load_models
from kielo.prompt.settings import with_values

TIMEOUT = 180  # seconds to wait for output: starting python + torch is slow on a busy 2-core machine


def test_chat_keeps_history_and_changes_settings(tiny_llama):
    bundle, models = load_models(load_config(overrides={"model": str(tiny_llama), "quantization.bits": 0}))
    out = io.StringIO()
    chat = Chat(bundle, models, with_values(bundle.config.generation, {"max_new_tokens": 4}), None, out)
    chat.answer("Mikä on Suomen pääkaupunki?")
    chat.answer("Entä Ruotsin?")
    assert [m["role"] for m in chat.history] == ["user", "assistant", "user", "assistant"]
    assert chat.messages("Kiitos")[2] == {"role": "user", "content": "Entä Ruotsin?"}
    assert chat.command("/system Vastaa lyhyesti.") and chat.messages("x")[0] == {"role": "system", "content": "Vastaa lyhyesti."}
    assert chat.command("/temperature 0.7") and chat.g.temperature == 0.7
    assert chat.command("/temperature kuuma") and chat.g.temperature == 0.7  # a bad value is reported, not applied
    assert "generation.temperature = 'kuuma' is not a float" in out.getvalue()
    assert chat.command("/stop ###") and chat.command("/stop ##") and chat.g.stop == ["###", "##"]
    assert chat.command("/stop") and chat.g.stop == []
    assert chat.command("/greedy") and chat.g.temperature == 0
    assert chat.command("/model nope") and chat.model == "base" and "no model 'nope'" in out.getvalue()
    assert chat.command("/clear") and chat.history == []
    assert chat.command("/frobnicate") and "unknown command /frobnicate" in out.getvalue()
    assert not chat.command("/quit") and not chat.command("/exit")
    assert re.search(r"\[\d+ tokens, [\d.]+ tokens/s, ", out.getvalue())

    lines = iter(["/max_new_tokens 3", "Hei", ""])

    def read_line(prompt: str) -> str:
        assert prompt == PROMPT
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None  # Ctrl-D

    out = io.StringIO()
    assert run_chat(bundle, models, bundle.config.generation, None, read_line, out) == 0
    assert "max_new_tokens=3" in out.getvalue() and "base> " in out.getvalue()


# --- through a pseudo-terminal -------------------------------------------------------------------


def _become_terminal_owner() -> None:  # runs in the child after setsid: the pty becomes its controlling terminal
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """``kielo prompt --chat`` on the slave side of a pty; the test types and reads on the master side."""

    def __init__(self, *args: str):
        self.master, slave = pty.openpty()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TERM": "dumb"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kielo", "prompt", "--chat", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            preexec_fn=_become_terminal_owner,
        )
        os.close(slave)
        self.seen = ""  # everything the chat printed (and the terminal echoed)
        self.pos = 0

    def read_until(self, pattern: str, timeout: float = TIMEOUT) -> str:
        """Read until ``pattern`` (a regex) appears in the output after the previous match; returns that stretch."""
        deadline = time.time() + timeout
        while True:
            found = re.search(pattern, self.seen[self.pos :])
            if found:
                text = self.seen[self.pos : self.pos + found.end()]
                self.pos += found.end()
                return text
            left = deadline - time.time()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"no {pattern!r} in the output:\n{self.seen[self.pos :]}")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], min(timeout, 1.0))
        if ready:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # the child closed the terminal
                return False
            if not chunk:
                return False
            self.seen += chunk.decode("utf-8", errors="replace")
        return True

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def exit_code(self, timeout: float = 60) -> int:
        """Wait for the chat to end, collecting what it prints; a chat that doesn't end fails the test."""
        deadline = time.time() + timeout
        while self.proc.poll() is None:
            if time.time() > deadline:
                raise AssertionError(f"the chat did not end; its output:\n{self.seen[self.pos :]}")
            self._read(0.2)
        while select.select([self.master], [], [], 0)[0] and self._read(0):  # what it printed last
            pass
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def terminal():
    opened: list[Terminal] = []

    def start(*args: str) -> Terminal:
        opened.append(Terminal(*args))
        return opened[-1]

    yield start
    for t in opened:
        t.close()


def test_chat_through_a_terminal(tiny_llama, terminal):
    t = terminal("--model", str(tiny_llama), "--quantization.bits", "0", "--generation.max_new_tokens", "8")
    t.read_until(r"/help for commands.*\n.*you> ")
    t.type("/help\n")
    t.read_until(r"stops it\.\s+you> ")
    t.type("Mikä on Suomen pääkaupunki?\n")
    t.read_until(r"base> (.|\n)*\[\d+ tokens, [\d.]+ tokens/s, [^\]]+\]\s+you> ")
    t.type("/max_new_tokens 3\n")
    t.read_until(r"\(generation: greedy, max_new_tokens=3\)\s+you> ")
    t.type("/temperature 0.8\n")
    t.read_until(r"temperature=0.8, .*max_new_tokens=3\)\s+you> ")
    t.type("Entä Ruotsin?\n")  # a second turn, with the first in the history
    t.read_until(r"\[[1-3] tokens, [\d.]+ tokens/s, [^\]]+\]\s+you> ")
    t.type("/clear\n")
    t.read_until(r"\(conversation cleared\)\s+you> ")
    t.type("/quit\n")
    assert t.exit_code() == 0
    assert "Traceback" not in t.seen


def test_ctrl_c_stops_an_answer_then_ends_the_chat(tiny_llama, terminal):
    t = terminal("--model", str(tiny_llama), "--quantization.bits", "0", "--generation.max_new_tokens", "100000")
    t.read_until(r"you> ")
    t.type("Hei\n")
    t.read_until(r"base> \S{3}")  # the answer is streaming: some text has arrived
    t.type("\x03")  # Ctrl-C: the terminal sends SIGINT to the chat
    t.read_until(r"\(answer stopped; not kept in the history\)\s+you> ", timeout=60)
    # Python's readline misses a SIGINT that lands between printing the prompt and waiting for a key (a person
    # can't type that fast; a test can), so give it a moment to start waiting.
    time.sleep(1)
    t.type("\x03")  # Ctrl-C at the prompt ends the chat
    assert t.exit_code() in (0, 130)
    assert "Traceback" not in t.seen
