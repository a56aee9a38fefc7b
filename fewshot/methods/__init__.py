"""Few-shot heads, one file each, on the shared `FewShotHead` base; `build_head(name, ...)`."""

from fewshot.methods.base import HEADS, FewShotHead, build_head, register_head

__all__ = ["HEADS", "FewShotHead", "build_head", "register_head"]
