"""Finding, reading and converting checkpoints."""
