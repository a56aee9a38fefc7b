"""The installed version, in a module of its own so that any layer can name it without
importing the package's top-level facade."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fewshot")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"
