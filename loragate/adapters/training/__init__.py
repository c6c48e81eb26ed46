"""`loragate train`: an instruction data set to a persona bundle the gateway serves.

Light to import: torch, transformers and peft load only when a run starts (trainer.py).
"""
