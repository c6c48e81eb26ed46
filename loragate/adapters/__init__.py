"""Personas: LoRA adapter bundles, their registry in the gateway, and their training."""
