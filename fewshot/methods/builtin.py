"""Imports every built-in head so that its `@register_head` runs."""

from fewshot.methods import (  # noqa: F401
    anil,
    batch_centred_probe,
    bd_cspn,
    finetune,
    fomaml,
    laplacianshot,
    linear_probe,
    maml,
    metasgd,
    protonet,
    pt_map,
    siamese,
    simpleshot,
    tim,
    tim_probe,
)
