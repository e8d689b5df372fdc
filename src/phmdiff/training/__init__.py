"""Training: the autoencoder, the PHMDiff loop, checkpoints, EMA, schedules, devices and run locks."""
