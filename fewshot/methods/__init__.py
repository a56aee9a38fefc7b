"""Few-shot heads, one file each, on the shared `FewShotHead` base; `build_head(name, ...)`."""

from fewshot.methods.base import (
    HEADS,
    FewShotHead,
    build_head,
    check_options,
    head_class,
    parse_head_spec,
    register_head,
    registered_heads,
    select_options,
)

__all__ = ["HEADS", "FewShotHead", "build_head", "check_options", "head_class", "parse_head_spec",
           "register_head", "registered_heads", "select_options"]
