"""The commands that read trained runs: evaluate, predict, export, report, and stats (a
dataset's statistics); `inference` loads a trained run for the first three."""
