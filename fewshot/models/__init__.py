"""Encoders by name: `build_backbone("conv4")`; users add their own with `register_backbone`."""

from fewshot.models.registry import (
    BACKBONES,
    Backbone,
    build_backbone,
    last_stage_parameters,
    register_backbone,
    registered_backbones,
)

__all__ = ["BACKBONES", "Backbone", "build_backbone", "last_stage_parameters",
           "register_backbone", "registered_backbones"]
