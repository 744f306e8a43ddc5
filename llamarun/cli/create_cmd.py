"""`llamarun create NAME -f Modelfile`: a new store entry from a Modelfile, as `ollama create` makes one.

FROM names a model (pulled first if it is a catalog name) or a checkpoint path, relative to the
Modelfile's folder. A model's files are hard-linked into the new entry; a path is pointed at, not
copied, so the entry needs that file to stay. Torch-free.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from llamarun.errors import LlamarunError, RequestError


def register(subparsers: Any) -> None:
    """Add `create` to the `llamarun` parser."""
    p = subparsers.add_parser("create", help="create a model from a Modelfile (FROM, PARAMETER, SYSTEM, ...)")
    p.add_argument("name", help="the new model's name (name or name:tag)")
    p.add_argument("-f", "--file", default="Modelfile", help="the Modelfile (default: ./Modelfile)")
    p.set_defaults(handler=cmd_create)


def cmd_create(args: argparse.Namespace) -> int:
    from llamarun.store.catalog import canonical_ref, split_ref
    from llamarun.store.create import create_from_model
    from llamarun.store.home import ModelStore
    from llamarun.store.model_defaults import settings_from_fields
    from llamarun.store.modelfile import parse_modelfile
    from llamarun.store.resolve import resolve_model

    modelfile = Path(args.file).expanduser()
    try:
        text = modelfile.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LlamarunError(f"cannot read the Modelfile {modelfile}: {err}", "give its path with -f") from None
    try:
        fields = parse_modelfile(text)
        settings = settings_from_fields(fields)
    except RequestError as err:
        raise LlamarunError(f"{modelfile}: {err.message}") from None
    store = ModelStore()
    name, tag = split_ref(canonical_ref(args.name))
    store.entry_dir(name, tag)  # a name the store cannot hold fails before any work
    base = fields["from"]
    if base.startswith(("./", "../")):  # relative to the Modelfile, as Ollama reads it
        base = str(modelfile.resolve().parent / base)
    resolved = resolve_model(base, store=store)
    manifest = create_from_model(store, name, tag, resolved.manifest, Path(resolved.path), settings)
    where = "" if resolved.manifest is not None else f" (it runs {resolved.path}: keep that file)"
    print(f"created {manifest.ref} from {resolved.name}{where}")
    return 0
