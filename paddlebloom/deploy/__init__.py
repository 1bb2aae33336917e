"""Static-graph deployment: run an exported generation program with `paddle.inference` only."""
