"""Experiments: the floor above tuning, analysis and evaluation that turns runs into answers.

- :mod:`~midblock.experiments.grid`: what a comparison runs (methods x bands x seeds), presets, validation;
- :mod:`~midblock.experiments.runner`: ``compare()``, every cell trained, evaluated and fingerprinted;
- :mod:`~midblock.experiments.table`: the one table and its one pooling rule over seeds;
- :mod:`~midblock.experiments.demo`: the main job (analyse, compare two arms, analyse again, report).
"""
