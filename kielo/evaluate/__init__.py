"""`kielo evaluate` and `kielo compare`: did the adapter help, on what, at what cost, and what did it change?

One module per job:
- ``dataset``: evaluation data (rows with or without reference answers) and the task-stratified subset;
- ``loss``: response-only loss per example (the tokens training scores);
- ``metrics``: reference metrics of one answer (chrF, ROUGE-L, exact match, ...) and corpus diversity;
- ``tasks``: per-task success checks from the rows' metadata (numbers, labels, formats);
- ``scores``: every per-example number of one model, and their means overall and per task;
- ``stats``: seeded (paired) bootstrap confidence intervals;
- ``paired``: base vs adapter on the same examples: deltas, per-example loss changes, wins and losses;
- ``loading``: the models to evaluate, each adapter checked against the base and its prompt format applied;
- ``adapter_analysis``: what a LoRA adapter changed, per layer and module;
- ``learning_curve``: the checkpoints of a run folder, evaluated;
- ``harness``: optional lm-evaluation-harness tasks;
- ``plots`` / ``report`` / ``html``: PNGs, JSON + Markdown, the self-contained HTML report;
- ``run``: :func:`~kielo.evaluate.run.evaluate` and :func:`~kielo.evaluate.run.compare`, which tie them together;
- ``command``: the ``kielo evaluate`` / ``kielo compare`` command lines.
"""
