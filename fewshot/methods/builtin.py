"""Imports every built-in head so that its `@register_head` runs."""

from fewshot.methods import finetune, linear_probe, protonet, simpleshot  # noqa: F401
