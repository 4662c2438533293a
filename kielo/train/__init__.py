"""Training: the loop, loss, optimizer and checkpoints. ``train(config)`` is the entry point."""

from kielo.train.trainer import train

__all__ = ["train"]
