"""Files kielo ships inside the package: the demo's config, the bundled Finnish data and the prompt suite.

They sit here under the relative paths they have in the repository (``configs/demo.yaml``,
``data/fi_instruct/{train,dev,test}.jsonl`` and the preference pairs ``data/fi_prefs/{train,dev,test}.jsonl``
with ``data/DATA.md`` and ``data/LICENSE``,
``prompts/fi_suite.yaml``); the repository's paths are links to these files, so there is one copy. A
relative path that names one of them therefore works from any folder and after a plain
``pip install kielo``: :func:`locate` returns a path as given when it exists, else the bundled file of
that name.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

log = logging.getLogger(__name__)

# Data loaders and the tokenizers take real file paths; a wheel installed by pip is always unpacked on
# disk, so the package's files are an ordinary folder.
RESOURCES = Path(str(files(__name__)))


def locate(path: str | Path) -> Path:
    """``path`` when it exists (or is absolute), else kielo's bundled file of that relative name, else ``path``.

    A missing path that names no bundled file is returned unchanged, so the caller's "does not exist"
    error names what the user gave.
    """
    p = Path(path)
    if p.is_absolute() or p.exists() or ".." in p.parts:
        return p
    bundled = RESOURCES / p
    if bundled.is_file():
        log.info("%s is not in the working directory: using kielo's bundled %s", p, bundled)
        return bundled
    return p
