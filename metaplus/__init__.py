"""metaplus: gradient-based meta-learning on Lightning + Hydra."""
