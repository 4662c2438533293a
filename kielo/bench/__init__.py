"""`kielo bench`: the stock QLoRA stack against kielo's training path, timed in one invocation on one GPU
(``qlora``), with the memory planner's estimate beside every measured peak."""
