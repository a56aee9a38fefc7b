"""Imports every built-in head so that its `@register_head` runs."""
