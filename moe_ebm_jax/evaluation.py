"""Evaluation of a trained run: the evaluators (evaluators/) in turn, then the report.

`evaluate_run(config, workdir)` (--mode=eval) restores the latest checkpoint and writes
<workdir>/eval/metrics.json and report.md with figures; `evaluate_state` does the same for a
state already in memory (train.train_and_evaluate at the end of training). The protocols are in
evaluators/coherence.py and evaluators/fid.py.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from moe_ebm_jax import input_pipeline
from moe_ebm_jax import log_setup
from moe_ebm_jax import metric_logging
from moe_ebm_jax import model_state
from moe_ebm_jax import workdir as workdir_lib
from moe_ebm_jax.data import coherence_scorers
from moe_ebm_jax.data import datasets
from moe_ebm_jax.evaluators import coherence as coherence_lib
from moe_ebm_jax.evaluators import common
from moe_ebm_jax.evaluators import fid as fid_eval
from moe_ebm_jax.evaluators import figures as figures_eval
from moe_ebm_jax.evaluators import inception
from moe_ebm_jax.evaluators import report


def evaluate_run(config, workdir: str, classify=None, features=None) -> dict[str, Any]:
  """Evaluates the latest checkpoint in `workdir` (--mode=eval): `evaluate_state` of it.

  Args:
    classify, features: as `evaluate_state`.
  """
  log_setup.ensure_visible()  # A script's first call shows progress as main.py does.
  model, state = workdir_lib.restore_latest(config, workdir)
  return evaluate_state(config, workdir, state, model=model, classify=classify,
                        features=features)


def _scorer(config, names):
  """(classify, scored, info, weak) of the dataset's coherence scorer, warning of weak ones."""
  scorer = coherence_scorers.make_scorer(config)
  threshold = config.eval.min_scorer_accuracy
  weak = coherence_scorers.weak_readers(scorer.info, names, threshold)
  for name, accuracy in weak.items():
    logging.warning('Coherence reads %r through a classifier of test accuracy %.3f, under %.2f '
                    '(eval.min_scorer_accuracy): coherence through it is unreliable. A better '
                    'one: modalities.register_coherence (docs/usage.md).', name, accuracy,
                    threshold)
  return scorer.classify, scorer.scored, scorer.info, weak


def _fid_evaluator(config, gen: common.Generators, features) -> tuple[Any, str]:
  """(FidEvaluator, the feature network's name) for config.eval.num_fid_samples; `features`
  None: the standard Inception, its reference statistics cached by the dataset's fingerprint."""
  num_fid = config.eval.num_fid_samples
  names = gen.model.vae.names
  network, fid_cache = 'injected by the caller', None
  if features is None:
    fid_cache = config.eval.fid_cache_dir or inception.default_cache_dir()
    features = inception.make_feature_fn(inception.load_params(fid_cache))
    network = fid_eval.NETWORK
  test_images = np.concatenate([common.batch_images(b, names)
                                for b in input_pipeline.first_test_batches(config, num_fid)])
  if len(test_images) < num_fid:
    logging.warning('FID: the test split has only %d examples; using N = %d, not %d.',
                    len(test_images), len(test_images), num_fid)
  if len(test_images) < fid_eval.MIN_RANKING_FID_SAMPLES:
    logging.warning('FID: N = %d < %d: biased upwards, does not rank models.',
                    len(test_images), fid_eval.MIN_RANKING_FID_SAMPLES)
  chunk = config.eval.fid_batch_size
  if fid_cache:
    reference = fid_eval.cached_reference_statistics(
        config.data.name, datasets.fingerprint(config.data), features, test_images, chunk,
        fid_cache, names)
  else:
    reference = fid_eval.reference_statistics(features, test_images, chunk, names)
  scorer = fid_eval.FidScorer(features, reference, chunk)
  return fid_eval.FidEvaluator(gen, scorer, test_images, batch_size=config.eval_batch_size), network


def evaluate_state(config, workdir: str, state, *, model: model_state.Model | None = None,
                   classify=None, features=None, out_name: str = 'eval',
                   notes: dict[str, Any] | None = None) -> dict[str, Any]:
  """Evaluates `state` (a model_state.TrainState) of `workdir`'s run; writes <workdir>/<out_name>/
  {metrics.json, report.md, *.png}. Phases: coherence, FID (if eval.num_fid_samples > 0 and
  the modalities are RGB images of one shape), figures; metrics.json after each.

  Every process runs it alike (the generation functions are compiled over every device).

  Args:
    model: model_state.make_model(config), if the caller has it already.
    classify: decodes {name: (N, *shape)} -> predicted classes (N, M); None: the dataset's
      coherence scorer (coherence_scorers.py: classifiers trained on first use, cached).
    features: images (N, H, W, 3) in [0, 1] -> (N, D) FID features; None: the standard FID
      Inception (inception.py) with its reference statistics cached.
  """
  step = int(state.step)
  out_dir = os.path.join(workdir, out_name)
  num_fid, limit = config.eval.num_fid_samples, config.eval.num_test_examples
  model = model or model_state.make_model(config)
  specs, names = model.vae.modalities, list(model.vae.names)
  if num_fid and (not all(s.is_rgb_image for s in specs) or len({s.shape for s in specs}) > 1):
    logging.info('FID: skipped; it compares RGB images, and %s has modalities %s.',
                 config.data.name, [(s.name, s.kind, s.shape) for s in specs])
    num_fid = 0
  logging.info('Evaluating step %d into %s: coherence (%s test tuples, %d joint samples), %s, '
               'figures.', step, out_dir, 'all' if limit is None else limit,
               config.eval.num_joint_samples,
               f'FID (N = {num_fid} per set)' if num_fid else 'no FID (eval.num_fid_samples = 0)')
  # Classifiers and the FID network load (or train / convert) only once a checkpoint is known.
  scored, info, weak = None, {'description': 'injected by the caller'}, {}
  if classify is None:
    classify, scored, info, weak = _scorer(config, names)
  gen = common.Generators(model, config.eval_batch_size, config.eval.clip_for_coherence)
  batches = input_pipeline.first_test_batches(config, limit)
  key = jax.random.PRNGKey(config.seed + 2)
  metrics = {'model': config.model.name, 'step': step, 'modalities': names,
             'prior': model.prior.describe(), **(notes or {}),
             'classifiers': info,
             'weak_scorers': {'threshold': config.eval.min_scorer_accuracy, 'accuracies': weak},
             'complete': False}  # Until the figures are done: a relaunch then evaluates again.

  def coherence():
    evaluator = coherence_lib.CoherenceEvaluator(gen, classify, batches, scored=scored,
                                                 num_joint=config.eval.num_joint_samples)
    return {'coherence': evaluator.run(state, key)}

  def fid():
    evaluator, network = _fid_evaluator(config, gen, features)
    return {'fid': evaluator.run(state, jax.random.fold_in(key, 2)), 'fid_network': network}

  def figures():
    first = batches[0]['x']
    writer = figures_eval.FigureWriter(gen, classify, config.model.name, out_dir)
    return {'figures': writer.run(
        state, jax.tree.map(lambda a: a[:config.num_image_samples], first),
        jax.random.fold_in(key, 1), data=(first, batches[0]['label']))}

  # One line per evaluator: a new one is a file in evaluators/ and an entry here.
  phases = [('coherence', coherence)] + ([('FID', fid)] if num_fid else []) + [
      ('figures', figures)]
  start = time.time()
  for i, (name, run) in enumerate(phases):
    phase_start = time.time()
    logging.info('Evaluation %d/%d: %s.', i + 1, len(phases), name)
    try:
      metrics.update(run())
    except Exception as e:
      if 'coherence' in metrics and jax.process_index() == 0:  # Keep what was computed.
        metrics['eval_seconds'] = time.time() - start
        metrics['failed'] = f'{name}: {type(e).__name__}: {e}'
        report.write_report(out_dir, metrics, {})
        logging.error('Evaluation: the %s failed; the numbers are in %s (metrics.json, '
                      'report.md).', name, out_dir)
      raise
    logging.info('Evaluation %d/%d: %s done in %s.', i + 1, len(phases), name,
                 metric_logging.format_duration(time.time() - phase_start))
    if name != 'figures':
      workdir_lib.write_metrics(out_dir, metrics)  # Each phase's numbers kept as they exist.
  figures_written = metrics.pop('figures')
  metrics['eval_seconds'] = time.time() - start
  metrics['complete'] = True
  if jax.process_index() == 0:  # One writer of metrics.json and report.md.
    report.write_report(out_dir, metrics, figures_written)
  logging.info('Evaluation of step %d written to %s (report.md) in %s: %s', step, out_dir,
               metric_logging.format_duration(metrics['eval_seconds']), report.summary(metrics))
  return metrics
