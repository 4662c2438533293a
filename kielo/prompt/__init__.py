"""`kielo prompt`: ask models prompts, side by side, from files or suites with pass/fail checks, or in a chat.

Modules: ``sources`` (prompts from arguments and files), ``suite`` (suite files, expectations, checks),
``settings`` (generation settings layered over the training run's), ``run`` (answering and running
suites), ``stream`` (one answer streamed as it is generated), ``table`` and ``report`` (terminal columns,
JSONL and Markdown), ``chat`` (the interactive chat) and ``command`` (the CLI entry).
"""
