"""Evaluators of a trained model, in big_vision's shape: each is handed the model's jitted
generation functions (common.Generators, compiled once) and what it scores with, and `run`s on a
state. evaluation.evaluate_state runs them in turn and writes the report (report.py).

  common.py     Generators: joint and conditional generation per LdMode, compiled once
  coherence.py  coherence maths and CoherenceEvaluator (cross, MoPoE subsets, joint)
  fid.py        FID statistics, their cache, and FidEvaluator (joint and cross FID)
  figures.py    FigureWriter: the report's pictures
  report.py     report.md from metrics.json's numbers

A new evaluator is one file here with a class taking what it needs and `run(state, key) ->
dict`, and one line in evaluation.evaluate_state's list of phases.
"""
