"""Hyperparameter search over a shared Optuna study (Akiba et al. 2019, "Optuna: A
Next-generation Hyperparameter Optimization Framework", KDD): the `search:` section of an
experiment (runner.config's SearchConfig) names the space; runner.search.space turns it into
Optuna distributions and trial experiments, runner.search.study keeps the study and hands
out its trials, runner.search.run trains them in the queue. docs/search.md describes it.
"""
