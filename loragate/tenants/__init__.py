"""Many teams on one gateway: API keys with the personas they may use, their limits, and what
each key used. Beside the persona layer, below HTTP: it raises domain errors, never HTTP ones."""
