"""loragate: an OpenAI-compatible gateway for Llama-3.1 with hot-loaded LoRA personas."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("loragate")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
