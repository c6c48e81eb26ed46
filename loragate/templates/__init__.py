"""Chat templates loragate ships (read with importlib.resources)."""
