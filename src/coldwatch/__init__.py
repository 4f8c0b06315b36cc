"""coldwatch: environmental and cold-chain monitoring collector for GMP manufacturing."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("coldwatch")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
