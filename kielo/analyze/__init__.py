"""Data analysis before training: lengths, truncation, masking, padding, duplicates, languages, tokenizers."""

from __future__ import annotations

__all__ = ["analyze_data"]


def __getattr__(name: str):
    # Lazy: importing the package (as the CLI does to set up its parser) must not pull in torch.
    if name == "analyze_data":
        from kielo.analyze.run import analyze_data

        return analyze_data
    raise AttributeError(name)
