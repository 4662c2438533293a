"""`kielo bench`: the stock QLoRA stack against kielo's training path, timed in one invocation on one GPU, with
the memory planner's estimate beside every measured peak. Modules: ``cases`` (variants, case options, the
registry), ``data``, ``models``, ``unsloth``, ``steps``, ``estimate``, ``worker`` (one variant's process),
``parity``, ``report``, ``runner`` (the driver) and ``command`` (the CLI)."""
