"""Where loragate keeps what it builds once and reuses (converted models, run artifacts)."""

import os
from pathlib import Path


def cache_dir() -> Path:
    explicit = os.environ.get("LORAGATE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "loragate"


def default_state_dir() -> Path:
    """Durable state (stored responses...): $XDG_STATE_HOME/loragate, else ~/.local/state."""
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "loragate"
