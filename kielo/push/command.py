"""`kielo push`: the command-line face of :mod:`kielo.push.plan`.

kielo push RUN --repo org/name [--private] [--gguf FILE] [--dry_run]
"""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def setup_parser(p: argparse.ArgumentParser) -> None:
    """The command's own options."""
    p.add_argument("run", metavar="RUN", help="a kielo run folder (the output_dir of kielo train) or one of its checkpoints")
    p.add_argument("--repo", required=True, help="the hub model repository to upload to, org/name (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--gguf", metavar="FILE", help="also upload this GGUF file (e.g. from kielo merge --gguf)")
    p.add_argument("--dry_run", action="store_true", help="print what would be uploaded (files, paths, the card) and upload nothing")


def run_command(args: argparse.Namespace, config) -> int:
    """Plan the upload; print it with --dry_run, else upload it (needs a network and a hub token)."""
    from kielo.push.plan import plan_upload, upload

    plan = plan_upload(args.run, args.repo, private=args.private, gguf=args.gguf)
    if args.dry_run:
        print(json.dumps(plan.describe(), indent=2, ensure_ascii=False))
        print("--- README.md (model card) ---")
        print(plan.card)
        return 0
    log.info("uploading %d files and the card to %s", len(plan.files), plan.repo)
    print(upload(plan))
    return 0
