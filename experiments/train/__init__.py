"""The one train / evaluate loop every track uses: settings, steps, the epoch loop, evaluation, checkpoints and resume state, GZSL, metrics, artifacts, run preparation, the tracks."""
