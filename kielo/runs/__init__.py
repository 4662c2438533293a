"""A training run's folder: its layout, what is written into it, and reading a saved run back.

``folder`` writes (layout, the existing-run check, clearing what a killed run left, side files, the final
atomic write), ``lock`` keeps a second run out while one writes, ``writes`` turns a failed write into one
message, ``metrics`` logs the training curve (cut back to the checkpoint on resume), ``saved`` reads a
finished or interrupted run back for resume, evaluate, compare, prompt, merge and plan. Nothing else in
kielo knows a run folder's file names.
"""
