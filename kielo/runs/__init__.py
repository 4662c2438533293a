"""A training run's folder: its layout, what is written into it, and reading a saved run back.

``folder`` writes (layout, the existing-run guard, side files, the final atomic write), ``metrics`` logs
the training curve, ``saved`` reads a finished or interrupted run back for resume, evaluate, compare,
prompt, merge and plan. Nothing else in kielo knows a run folder's file names.
"""
