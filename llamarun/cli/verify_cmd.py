"""`llamarun verify [MODEL...] [--repair]`: re-hash stored models against their manifests.

Catches what loading does not: weights zeroed or truncated after the pull, files deleted from under
the store, manifests that cannot be read. Exits 1 when anything is wrong, naming the fix; `--repair`
removes each bad entry and pulls it again. Torch-free, like the other store commands.
"""

from __future__ import annotations

import argparse
from typing import Any

from llamarun.errors import LlamarunError, ModelNotFoundError


def register(subparsers: Any) -> None:
    """Add `verify` to the `llamarun` parser."""
    p = subparsers.add_parser("verify", help="check stored models' files against their sha256",
                              description="Re-hash the files of stored models (all, or those named) and report "
                                          "any that are missing, truncated or corrupt.")
    p.add_argument("names", nargs="*", metavar="MODEL", help="models to check (default: every stored model)")
    p.add_argument("--repair", action="store_true", help="remove each bad entry and pull it again")
    p.add_argument("--quick", action="store_true", help="check presence and sizes only, not hashes")
    p.set_defaults(handler=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from llamarun.store.catalog import canonical_ref, split_ref
    from llamarun.store.health import clean_stale_tmp, entry_problems, entry_refs
    from llamarun.store.home import ModelStore

    store = ModelStore()
    clean_stale_tmp(store)
    if args.names:
        refs = [split_ref(canonical_ref(n)) for n in args.names]
        for (name, tag), typed in zip(refs, args.names, strict=True):
            if not store.has(name, tag):
                raise ModelNotFoundError(f"model '{typed}' is not in the store", "see `llamarun list`")
    else:
        refs = entry_refs(store)
    bad = []
    for name, tag in refs:
        problems = entry_problems(store, name, tag, hashes=not args.quick)
        print(f"{name}:{tag}: " + ("ok" if not problems else "BAD"), flush=True)
        for line in problems:
            print(f"  {line}")
        if problems:
            bad.append(f"{name}:{tag}")
    if bad and args.repair:
        from llamarun.store.resolve import pull_model

        for ref in bad:
            store.remove(*split_ref(ref))
            pull_model(ref, store=store)
            print(f"{ref}: repaired (pulled again)")
        return 0
    if bad:
        raise LlamarunError(f"{len(bad)} stored model{'s are' if len(bad) > 1 else ' is'} damaged: "
                            f"{', '.join(bad)}", f"run `llamarun verify --repair {' '.join(bad)}` to pull "
                            "them again, or `llamarun rm` them")
    if not refs:
        print("no models in the store")
    return 0
