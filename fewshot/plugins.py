"""Heads and backbones defined outside the package.

A plugin is a module that registers with `@register_head` / `@register_backbone` when
imported. It is found through the entry-point groups `fewshot.heads` and
`fewshot.backbones` of an installed distribution, or named in `FEWSHOT_PLUGINS`
(`mod[,mod]`, importable from `sys.path`). Both registries load plugins before they
answer, so the configs, `fewshot list` and every command see the same set.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from fewshot.errors import UsageError

GROUPS = ("fewshot.heads", "fewshot.backbones")
_loaded: set[str] = set()


def load_plugins() -> None:
    """Import every plugin module once (a module named again later is imported then)."""
    names = [m.strip() for m in os.environ.get("FEWSHOT_PLUGINS", "").split(",") if m.strip()]
    for name in names:
        if name in _loaded:
            continue
        _loaded.add(name)
        try:
            importlib.import_module(name)
        except ImportError as exc:
            _loaded.discard(name)
            raise UsageError(f"cannot import plugin module: {exc}", f"FEWSHOT_PLUGINS={name}",
                             "check the module name and that it is on PYTHONPATH") from None
    for group in GROUPS:
        for point in entry_points(group=group):
            key = f"{group}:{point.value}"
            if key in _loaded:
                continue
            _loaded.add(key)
            try:
                point.load()
            except ImportError as exc:
                raise UsageError(f"cannot load plugin '{point.name}': {exc}", group,
                                 "reinstall the package that provides it") from None
