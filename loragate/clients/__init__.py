"""Clients of a running gateway. Imports neither torch nor vLLM."""
