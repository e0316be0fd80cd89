"""Training any model: the one loop, checkpoints, learning-rate schedules, the curves, and the files a
training stage writes."""
