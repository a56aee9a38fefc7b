"""fewshot: few-shot and meta-transfer learning for medical images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fewshot")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
