"""The interactive chat of `kielo prompt --chat`: a line-based loop with history and streamed answers.

Every line is a user turn, answered with the whole conversation so far; lines starting with ``/`` are
commands (``/help`` lists them). Ctrl-C while an answer streams stops that answer (it is not kept in
the history); Ctrl-C or Ctrl-D at the prompt ends the chat. This module is a user interface, so it prints.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from kielo.config.schema import GenerationConfig
from kielo.errors import KieloError
from kielo.prompt.settings import KEYS, describe, with_values

PROMPT = "you> "
HELP = f"""commands:
  /help                 this list
  /quit, /exit          end the chat (also Ctrl-D, or Ctrl-C at the prompt)
  /clear                forget the conversation so far
  /system [TEXT]        set the system prompt (no text: remove it); the history is kept
  /settings             show the model, system prompt and generation settings
  /greedy               temperature 0
  /model [NAME]         list the models, or switch to one (the history is kept)
  /KEY VALUE            change a generation setting: {", ".join(KEYS)}
                        (e.g. /temperature 0.7, /max_new_tokens 64; /stop TEXT adds a stop string, /stop alone clears them)
Ctrl-C while an answer is streaming stops it."""


class Chat:
    """The chat's state: which model, the settings, the system prompt and the conversation so far."""

    def __init__(self, bundle, models: list[str], g: GenerationConfig, system: str | None, out: TextIO = sys.stdout):
        self.bundle, self.models, self.g, self.system, self.out = bundle, models, g, system, out
        self.model = models[-1]
        self.history: list[dict[str, str]] = []

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def messages(self, user: str) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, *self.history, {"role": "user", "content": user}]

    def command(self, line: str) -> bool:
        """Run a ``/command``; False when the chat should end."""
        name, _, arg = line[1:].strip().partition(" ")
        arg = arg.strip()
        if name in ("quit", "exit", "q"):
            return False
        if name in ("help", "h", "?"):
            self.say(HELP)
        elif name == "clear":
            self.history.clear()
            self.say("(conversation cleared)")
        elif name == "system":
            self.system = arg or None
            self.say(f"(system prompt: {self.system!r})")
        elif name == "settings":
            self.say(f"model: {self.model}\nsystem prompt: {self.system!r}\ngeneration: {describe(self.g)}")
        elif name == "model":
            if arg and arg not in self.models:
                self.say(f"(no model {arg!r}; models: {', '.join(self.models)})")
            elif arg:
                self.model = arg
                self.say(f"(model: {arg})")
            else:
                self.say("models: " + ", ".join(f"{m} (current)" if m == self.model else m for m in self.models))
        elif name == "greedy":
            self.g = with_values(self.g, {"temperature": 0})
            self.say(f"(generation: {describe(self.g)})")
        elif name in KEYS:
            self.set_value(name, arg)
        else:
            self.say(f"(unknown command /{name}; /help lists the commands)")
        return True

    def set_value(self, key: str, arg: str) -> None:
        if key == "stop":
            value: object = [*self.g.stop, arg] if arg else []
        elif not arg:
            self.say(f"({key} is {getattr(self.g, key)!r}; give a value to change it)")
            return
        else:
            value = arg
        try:
            self.g = with_values(self.g, {key: value})
        except KieloError as e:
            self.say(f"({e.message}{'; ' + e.fix if e.fix else ''})")
            return
        self.say(f"(generation: {describe(self.g)})")

    def answer(self, user: str) -> None:
        from kielo.model.bundle import use_variant
        from kielo.prompt.stream import stream_answer

        self.out.write(f"{self.model}> ")
        self.out.flush()

        def show(piece: str) -> None:
            self.out.write(piece)
            self.out.flush()

        started = time.time()
        try:
            with use_variant(self.bundle, self.model):
                gen = stream_answer(self.bundle, self.messages(user), self.g, show)
        except KeyboardInterrupt:
            self.say("\n(answer stopped; not kept in the history)")
            return
        speed = gen.tokens / max(time.time() - started, 1e-9)
        how = "end token" if gen.ended else f"stop string {gen.stop!r}" if gen.stop else "cut at max_new_tokens"
        self.say(f"\n[{gen.tokens} tokens, {speed:.1f} tokens/s, {how}]")
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": gen.text}]


def run_chat(
    bundle,
    models: list[str],
    g: GenerationConfig,
    system: str | None,
    read_line: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
) -> int:
    """The chat loop; returns the exit status (0: the user ended it)."""
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  # line editing and history for input(), where the platform has it
        except ImportError:
            pass
    chat = Chat(bundle, models, g, system, out)
    chat.say(f"kielo chat with {chat.model} ({describe(g)}). /help for commands, /quit or Ctrl-D to end.")
    while True:
        try:
            line = read_line(PROMPT)
        except (EOFError, KeyboardInterrupt):
            chat.say()
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not chat.command(line):
                return 0
            continue
        chat.answer(line)
