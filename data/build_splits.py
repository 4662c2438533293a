"""Build the train / dev / test splits of kielo's Finnish instruction data from data/parts/*.jsonl.

Each task type is split on its own (stratified) with a fixed seed, so every split has every task:
about 13% test (held out; reported on), 10% dev (for choosing the recipe), the rest train.
Run from the repository root: python data/build_splits.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
OUT = HERE / "fi_instruct"
SEED = 20261127
TEST, DEV = 0.13, 0.10


def build() -> dict[str, list[dict]]:
    """The three splits, each sorted by id (deterministic: same parts, same splits)."""
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for part in sorted((HERE / "parts").glob("*.jsonl")):
        rows = [json.loads(line) for line in part.read_text(encoding="utf-8").splitlines() if line.strip()]
        random.Random(f"{SEED}-{part.stem}").shuffle(rows)
        n_test, n_dev = round(len(rows) * TEST), round(len(rows) * DEV)
        splits["test"] += rows[:n_test]
        splits["dev"] += rows[n_test : n_test + n_dev]
        splits["train"] += rows[n_test + n_dev :]
    for rows in splits.values():
        rows.sort(key=lambda r: r["id"])
    return splits


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, rows in build().items():
        (OUT / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{name}: {len(rows)}")


if __name__ == "__main__":
    main()
