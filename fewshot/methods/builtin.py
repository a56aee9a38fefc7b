"""Imports every built-in head so that its `@register_head` runs."""

from fewshot.methods import anil, fomaml, maml, metasgd  # noqa: F401
