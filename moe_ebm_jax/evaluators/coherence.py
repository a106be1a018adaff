"""Coherence: the metric maths, and CoherenceEvaluator over a test set and joint samples.

Protocols (docs/method.md, section 5):
- Joint coherence: N prior samples (the EBM models draw z from the prior Langevin chain, each
  w_m ~ p(w)); the fraction on which the M classifiers predict the same digit.
- Cross coherence (MMVAE+): for each source m and target d != m, the accuracy of clf_d on the
  decode of d from z ~ q(z | x_m), w_d ~ p(w), over the test set; averaged over sources per
  target, then over targets (= the mean over all ordered pairs).
- MoPoE's protocol: every non-empty proper subset S of inputs, z from the mixture over S (an
  expert drawn uniformly from S per example), accuracy on the targets outside S, reported per
  subset size.
- For a prior that refines the posterior (the EBM), every conditional number is reported
  pre-LD (z from q) and post-LD (z refined by the prior's posterior inference).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from moe_ebm_jax import metric_logging
from moe_ebm_jax.evaluators import common
from moe_ebm_jax.vae import aggregation
from moe_ebm_jax.data import missing


def subsets(num_modalities: int) -> list[tuple[int, ...]]:
  """Every non-empty proper subset of range(M), by size then lexicographically."""
  full = aggregation.nonempty_subsets(num_modalities)[:-1]  # The last row is every modality.
  return [tuple(int(i) for i in np.flatnonzero(row)) for row in full]


def cross_coherence(correct: np.ndarray, scored=None) -> float:
  """MMVAE+ cross coherence from a (source, target) accuracy matrix (diagonal ignored):
  the mean over sources per target, then over the targets that are scored (all by default)."""
  m = correct.shape[0]
  scored = np.ones(m, bool) if scored is None else np.asarray(scored)
  off = ~np.eye(m, dtype=bool)
  per_target = [correct[off[:, d], d].mean() for d in range(m) if scored[d]]
  return float(np.mean(per_target))


def cross_coherence_by_class(labels: np.ndarray, right: list[np.ndarray], has_source:
                             list[np.ndarray], scored=None) -> dict[str, float]:
  """Cross coherence over the test examples of each class: which classes a model carries across
  modalities and which it loses (data missing not at random hides some classes' modalities).

  Args:
    labels: (N,) int, the examples' classes.
    right: per source m, (N, M) bool: target d's classifier right on the decode from m.
    has_source: per source m, (N,) bool: the example has modality m (incomplete test data).
    scored: as cross_coherence's.
  Returns:
    {str(class): cross coherence} for each class whose examples have every source.
  """
  out = {}
  for c in np.unique(labels):
    rows = [(labels == c) & has for has in has_source]
    if all(r.any() for r in rows):
      pairs = np.stack([right[src][rows[src]].mean(axis=0) for src in range(len(right))])
      out[str(int(c))] = round(cross_coherence(pairs, scored), 4)
  return out


def joint_coherence(predictions: np.ndarray) -> float:
  """Fraction of joint samples whose M predicted digits all agree: (N, M) -> float."""
  return float(np.mean(np.all(predictions == predictions[:, :1], axis=1)))


def joint_class_share(predictions: np.ndarray) -> list[float]:
  """Per class k, the fraction of joint samples whose M predictions all equal k: (N, M) ->
  [share_0, ..., share_K] (K the largest class predicted). The shares sum to the joint coherence;
  a prior that decodes one class only can still score high coherence, which these show.
  Classes never predicted above the largest are not listed."""
  agreed = predictions[np.all(predictions == predictions[:, :1], axis=1), 0]
  counts = np.bincount(agreed, minlength=int(predictions.max()) + 1) if predictions.size else []
  return [float(c) / len(predictions) for c in counts]


def class_balance(shares: list[float] | None, num_classes: int) -> float | None:
  """How evenly the agreeing joint samples spread over the classes: the entropy of their class
  distribution over log K; 1 when every class is as frequent, 0 when one class takes all. None
  for an evaluation without shares."""
  if not shares or not sum(shares) or num_classes < 2:
    return None
  p = np.asarray(shares + [0.0] * (num_classes - len(shares))) / sum(shares)
  p = p[p > 0]
  return float(-(p * np.log(p)).sum() / np.log(num_classes))


def subset_coherence(accuracy: dict[tuple[int, ...], float]) -> dict[int, float]:
  """MoPoE protocol: mean accuracy per subset size from {subset: accuracy on its targets}."""
  by_size: dict[int, list[float]] = {}
  for s, acc in accuracy.items():
    by_size.setdefault(len(s), []).append(acc)
  return {size: float(np.mean(v)) for size, v in sorted(by_size.items())}


class CoherenceEvaluator:
  """Every coherence number of a model over fixed test batches and fresh joint samples.

  Args:
    gen: the model's common.Generators.
    classify: decodes {name: (N, *shape)} -> predicted classes int (N, M) (-1: not scored).
    scored: bool per modality, whether its predictions count (None: the specs' coherence).
    batches: the test batches (dicts with 'x', 'label'), the same at every run.
    num_joint: joint samples for joint coherence (0: none).
    cross_only: score only the single-source subsets: the MMVAE+ cross coherence without the
      MoPoE protocol's larger subsets (M instead of 2^M - 2 generations per batch).
  """

  def __init__(self, gen: common.Generators, classify, batches, *, scored=None,
               num_joint: int = 0, cross_only: bool = False):
    self.gen = gen
    self.classify = classify
    specs = gen.model.vae.modalities
    self.scored = tuple(scored) if scored is not None else tuple(
        s.coherence != 'none' for s in specs)
    self.batches = list(batches)
    self.num_joint = num_joint
    self.cross_only = cross_only

  def run(self, state, key: jax.Array) -> dict[str, Any]:
    """{'num_test_examples', per LdMode tag {'cross_coherence', 'cross_coherence_matrix',
    'subset_coherence', 'cross_coherence_by_class'}, and with num_joint 'joint_coherence',
    'joint_class_share', 'num_joint_samples'}."""
    results = self._conditional(state, key)
    if self.num_joint:
      results.update(self._joint(state, key))
    return results

  def _conditional(self, state, key: jax.Array) -> dict[str, Any]:
    m = self.gen.model.vae.num_modalities
    all_subsets = [(s,) for s in range(m)] if self.cross_only else subsets(m)
    modes = self.gen.modes
    # hits[mode][subset] = number correct per target modality, over counts[subset] examples:
    # with incomplete test data (batches with 'observed') the examples that have every input of
    # the subset (cross coherence from what is there); all of them otherwise.
    hits = {mode: {s: np.zeros(m) for s in all_subsets} for mode in modes}
    counts = {s: 0 for s in all_subsets}
    # Per class, single sources only: right[mode][source] rows (B, M) per batch, beside the
    # labels and which examples have the source.
    right = {mode: {src: [] for src in range(m)} for mode in modes}
    seen_labels, has_source = [], {src: [] for src in range(m)}
    count = 0
    start = time.time()
    names = self.gen.model.vae.names
    for i, batch in enumerate(self.batches):
      x, labels = jax.tree.map(jnp.asarray, batch['x']), np.asarray(batch['label'])
      observed = missing.batch_observed(batch, names)
      for j, s in enumerate(all_subsets):
        has_inputs = observed[list(s)].all(axis=0)  # (B,)
        counts[s] += int(has_inputs.sum())
        for mode in modes:
          mask = jnp.asarray(np.isin(np.arange(m), s))
          k = jax.random.fold_in(jax.random.fold_in(key, i), j * 2 + int(mode.post_ld))
          decodes, _, _ = self.gen.coherence_conditional[mode](state, x, mask, k)
          predicted = np.asarray(self.classify(decodes))
          hits[mode][s] += ((predicted == labels[:, None]) & has_inputs[:, None]).sum(axis=0)
          if len(s) == 1:
            right[mode][s[0]].append(predicted == labels[:, None])
        if len(s) == 1:
          has_source[s[0]].append(has_inputs)
      seen_labels.append(labels)
      count += len(labels)
      elapsed = time.time() - start
      logging.info('coherence: batch %d/%d, %.1f s, ETA %s', i + 1, len(self.batches), elapsed,
                   metric_logging.format_duration(
                       elapsed / (i + 1) * (len(self.batches) - i - 1)))
    results: dict[str, Any] = {'num_test_examples': count}
    if any(c != count for c in counts.values()):
      results['num_examples_per_source'] = {'+'.join(names[i] for i in s): c
                                            for s, c in counts.items()}
    if not all(counts.values()):
      raise ValueError('coherence: no test example has every input of subset(s) '
                       f'{[s for s, c in counts.items() if not c]} (incomplete test data).')
    scored = np.asarray(self.scored)
    for mode in modes:
      accuracy = {s: float(np.mean([hits[mode][s][d] / counts[s] for d in range(m)
                                    if d not in s and scored[d]]))
                  for s in all_subsets if any(scored[d] for d in range(m) if d not in s)}
      pairs = np.zeros((m, m))
      for src in range(m):
        pairs[src] = hits[mode][(src,)] / counts[(src,)]
      results[mode.value] = {
          'cross_coherence': cross_coherence(pairs, scored),
          'cross_coherence_matrix': pairs.round(4).tolist(),  # [source][target]
          'subset_coherence': {str(k): v for k, v in subset_coherence(accuracy).items()},
          'cross_coherence_by_class': cross_coherence_by_class(
              np.concatenate(seen_labels),
              [np.concatenate(right[mode][src]) for src in range(m)],
              [np.concatenate(has_source[src]) for src in range(m)], scored),
      }
    return results

  def _joint(self, state, key: jax.Array) -> dict[str, Any]:
    predictions = []
    n = 0
    start = time.time()
    while n < self.num_joint:
      samples, _ = self.gen.coherence_joint(state, jax.random.fold_in(key, 10_000 + n))
      predictions.append(np.asarray(self.classify(samples))[:, np.asarray(self.scored)])
      n += len(predictions[-1])
      elapsed = time.time() - start
      logging.info('joint coherence: %d/%d samples, %.1f s, ETA %s', min(n, self.num_joint),
                   self.num_joint, elapsed, metric_logging.format_duration(
                       elapsed / min(n, self.num_joint) * max(self.num_joint - n, 0)))
    predictions = np.concatenate(predictions)[:self.num_joint]
    return {'joint_coherence': joint_coherence(predictions),
            'joint_class_share': [round(s, 4) for s in joint_class_share(predictions)],
            'num_joint_samples': int(len(predictions))}
