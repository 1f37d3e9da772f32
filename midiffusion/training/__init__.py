"""Target-only training of the score model: configuration, loop, checkpoints, export."""
