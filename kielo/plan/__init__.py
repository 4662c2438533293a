"""Memory planning for GPU training: estimate the peak before loading anything, and pick settings that fit.

``shape`` reads the sizes that matter from a model's config (no weights), ``memory`` turns them and a
training setup into a peak estimate with its parts, ``planner`` chooses micro-batch size and gradient
checkpointing for a card, and ``command`` is ``kielo plan``.
"""
