"""Training one run: the Trainer (model, optimizer, steps), the Session that drives it
from start or resume to the finished run directory, and what they use.

Bottom up: schedule, optimizers, averaging (EMA, Lookahead), precision, distribute
(strategies, devices), determinism, checkpoints, tta, tboard; signals (stop requests),
progress (the terminal line), trainer, failures, session (`run`).
"""
