"""Experiment files: the schema, its defaults, strict validation and `--set` overrides.

An experiment file is multi-document YAML, one experiment per document, in the format of
the seed runner (module / model / model_parameters / train_parameters / skip_error_test)
plus the `dataset` and `paper` sections. The modules, bottom up:

- runner.config.errors: ConfigError, and collecting every problem into one report.
- runner.config.schema: every key, declared once with its type, default, meaning, choices
  or range and whether it may change on resume (the dataclasses DatasetConfig,
  TrainConfig, PaperConfig and Experiment).
- runner.config.yaml_io: reading an experiment file (size, encoding, duplicate keys) and
  writing YAML.
- runner.config.convert: the type engine that turns a raw mapping into the schema's
  objects, with one-line errors naming the key.
- runner.config.checks: the rules a type cannot express (ranges, choices, the keys that go
  together, run names).
- runner.config.expand: `--set`, `grid` and `repeats`, and loading a whole file.
- runner.config.reference: the YAML reference (docs/configuration.md, `python -m runner
  keys`) and what a resume may change.

Errors are `ConfigError`s: one line naming the file, the experiment and the key, never a
traceback.
"""
