"""Data analysis before training: lengths, truncation, masking, padding, duplicates, languages, tokenizers."""

from kielo.analyze.run import analyze_data

__all__ = ["analyze_data"]
