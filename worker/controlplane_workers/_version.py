"""The distribution's version, read from its installed metadata: pyproject.toml is the one source."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("controlplane-workers")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0.0.0+unknown"
