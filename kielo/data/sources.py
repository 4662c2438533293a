"""Where a data set comes from: a local file, a folder written by ``datasets``' ``save_to_disk``, or a hub id.

Local files are read by kielo's own readers (kielo.data.records: errors name the line); folders and hub ids
are read with Hugging Face ``datasets`` (its cache, its formats), and their rows then go through the same
validation, named ``ID[split][row N]``. A hub id is checked once, with a short timeout, before
``datasets`` is asked to load it, so a machine without a network gets a clear error in seconds instead of a
download's retries.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kielo.errors import KieloError
from kielo.extras import require

# Local data files kielo reads itself (kielo.data.records); anything else local must be a save_to_disk folder.
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SPLIT_SUFFIX = re.compile(r"^(.+):([\w.-]+)$")
# Files written by save_to_disk: a Dataset has state.json, a DatasetDict dataset_dict.json.
DISK_MARKERS = ("state.json", "dataset_dict.json")


@dataclass(frozen=True)
class ReadOptions:
    """How a folder or hub id is read (``data.subset``, ``data.split``, ``data.revision``) and which column
    names map onto kielo's (``data.columns``); local files use only ``columns``."""

    split: str = "train"
    subset: str | None = None
    revision: str | None = None
    columns: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, data_config, split: str | None = None) -> ReadOptions:
        """The options of ``data.train`` (``split`` None) or of another split (``validation``)."""
        d = data_config
        return cls(split or d.split, d.subset, d.revision, dict(d.columns))


@dataclass(frozen=True)
class DataSource:
    """A resolved data location: ``kind`` is file, disk (a save_to_disk folder) or hub."""

    kind: str
    location: str
    split: str


def is_disk_folder(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``datasets``' ``save_to_disk``."""
    return path.is_dir() and any((path / m).is_file() for m in DISK_MARKERS)


def resolve_source(value: str | Path, options: ReadOptions, given_with: str) -> DataSource:
    """Tell a local file, a save_to_disk folder and a hub id apart (an ``ID:SPLIT`` suffix picks the split);
    a local path that does not exist is an error of its own, not a hub lookup."""
    from kielo.resources import locate

    text = str(value)
    p = locate(text)
    if p.is_file():
        return DataSource("file", str(p), options.split)
    split = options.split
    m = SPLIT_SUFFIX.match(text)
    if not p.exists() and m and (HUB_ID.match(m.group(1)) or is_disk_folder(Path(m.group(1)).expanduser())):
        text, split = m.group(1), m.group(2)
        p = Path(text).expanduser()
    if p.is_dir():
        if is_disk_folder(p):
            return DataSource("disk", str(p), split)
        raise KieloError(
            f"{p} is a folder, not a data file (nor a data set written by save_to_disk)",
            f"point {given_with} to a file ending in {', '.join(SUFFIXES)}, or to a save_to_disk folder",
        )
    if p.exists():
        raise KieloError(f"{p} is not a data file", f"point {given_with} to a file ending in {', '.join(SUFFIXES)}")
    looks_local = text.startswith((".", "/", "~")) or text.count("/") != 1 or Path(text).suffix.lower() in SUFFIXES
    if looks_local or not HUB_ID.match(text):
        raise KieloError(
            f"data file {p} does not exist", f"check the path given with {given_with}, or give a hub dataset id (org/name)"
        )
    return DataSource("hub", text, split)


def _offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("HF_DATASETS_OFFLINE", ""))
    return constants.HF_HUB_OFFLINE or any(f.upper() in ("1", "ON", "YES", "TRUE") for f in flags)


def _check_hub(source: DataSource, options: ReadOptions) -> None:
    """Ask the hub once (2 s timeout) whether the dataset is there, unless offline (then the cache answers)."""
    from huggingface_hub import dataset_info
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    fix = (
        f"without a network, set HF_DATASETS_OFFLINE=1 to read a copy in the local cache, or save the set where there "
        f"is a network (datasets.load_dataset('{source.location}').save_to_disk(DIR)) and pass DIR"
    )
    try:
        dataset_info(source.location, revision=options.revision, timeout=2)
    except (GatedRepoError, HfHubHTTPError) as e:
        if isinstance(e, RevisionNotFoundError):
            raise KieloError(f"dataset `{source.location}` has no revision {options.revision!r}", "check data.revision") from None
        if isinstance(e, RepositoryNotFoundError):
            raise KieloError(
                f"dataset `{source.location}` is not on the hub (or is private)", "check the id, or log in with `hf auth login`"
            ) from None
        # The hub answered (gated, rate-limited): loading says what it refuses.
    except Exception as e:  # noqa: BLE001 - connection errors come from several libraries (httpx, requests, ssl)
        raise KieloError(f"dataset `{source.location}` can't be reached on the hub ({str(e)[:160]})", fix) from None


def open_dataset(source: DataSource, options: ReadOptions, streaming: bool = False):
    """The ``datasets`` Dataset (or IterableDataset with ``streaming``) of a disk folder, hub id or local file."""
    require("datasets", f"reading {source.location}")
    import datasets

    datasets.logging.set_verbosity_error()  # its progress lines would interleave with kielo's log
    if source.kind == "file":
        suffix = Path(source.location).suffix.lower().lstrip(".")
        builder = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}[suffix]
        return datasets.load_dataset(builder, data_files=source.location, split="train", streaming=streaming)
    if source.kind == "disk":
        try:
            ds = datasets.load_from_disk(source.location)
        except (FileNotFoundError, ValueError) as e:
            raise KieloError(f"{source.location} is not a readable save_to_disk folder ({str(e)[:160]})", "save it again") from None
        if isinstance(ds, datasets.DatasetDict):
            if source.split not in ds:
                raise KieloError(
                    f"{source.location} has no split `{source.split}` (it has: {', '.join(ds)})",
                    "set data.split, or write FOLDER:SPLIT",
                )
            ds = ds[source.split]
        return ds.to_iterable_dataset() if streaming else ds
    if not _offline():
        _check_hub(source, options)
    try:
        return datasets.load_dataset(
            source.location, options.subset, split=source.split, revision=options.revision, streaming=streaming
        )
    except ConnectionError as e:
        raise KieloError(
            f"dataset `{source.location}` is not in the local cache and the hub is off ({str(e)[:160]})",
            "unset HF_DATASETS_OFFLINE / HF_HUB_OFFLINE where there is a network, or pass a save_to_disk folder",
        ) from None
    except datasets.exceptions.DatasetNotFoundError as e:
        raise KieloError(f"dataset `{source.location}` was not found ({str(e)[:200]})", "check the id and data.revision") from None
    except ValueError as e:  # an unknown split or subset: datasets names the ones there are
        raise KieloError(f"dataset `{source.location}`: {str(e)[:300]}", "check data.split and data.subset") from None


def dataset_rows(source: DataSource, options: ReadOptions, streaming: bool = False, skip: int = 0) -> Iterator[tuple[str, Any]]:
    """(where, row) for every row of a folder or hub set (or, streaming, of a local file), from row ``skip``."""
    ds = open_dataset(source, options, streaming)
    if skip:
        ds = ds.skip(skip) if streaming else ds.select(range(skip, len(ds)))
    name = source.location if source.kind == "file" else f"{source.location}[{source.split}]"
    for i, row in enumerate(ds, skip):
        # Arrow gives every row every column, null where a row had none (an alpaca row of a mixed set has
        # messages: null): those nulls are not the row's own fields.
        yield f"{name}[row {i}]", {k: v for k, v in row.items() if v is not None}


def rename_columns(row: Any, columns: dict[str, str]) -> Any:
    """``row`` with its keys renamed by ``data.columns``. A row that already has the target name keeps its
    own (a validation file in kielo's names beside a training set in others'); a mapped column a row lacks is
    left to the style check, whose error names the row and points to data.columns."""
    if not columns or not isinstance(row, dict):
        return row
    out = {}
    for key, value in row.items():
        target = columns.get(key)
        out[target if target and target not in row else key] = value
    return out
