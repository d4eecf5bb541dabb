"""What every training run shares: draws, EMA, process helpers, checkpoints and the loss log,
the learning-rate schedule, and the method-agnostic loop (:func:`training.loop.train`)."""
