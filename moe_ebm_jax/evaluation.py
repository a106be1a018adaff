"""Evaluation: conditional and joint generation, coherence, and the report of a trained run.

Protocols (docs/method.md, section 5):
- Joint coherence: N prior samples (the EBM models draw z from the prior Langevin chain, each
  w_m ~ p(w)); the fraction on which the M classifiers predict the same digit.
- Cross coherence (MMVAE+): for each source m and target d != m, the accuracy of clf_d on the
  decode of d from z ~ q(z | x_m), w_d ~ p(w), over the test set; averaged over sources per
  target, then over targets (= the mean over all ordered pairs).
- MoPoE's protocol: every non-empty proper subset S of inputs, z from the mixture over S (an
  expert drawn uniformly from S per example), accuracy on the targets outside S, reported per
  subset size.
- For models with an EBM prior, every conditional number is reported pre-LD (z from q) and
  post-LD (z refined by posterior Langevin on log p(x_S | z, w_S) + f_a(z) + log p0(z)).

`evaluate_run(config, workdir)` (--mode=eval) restores the latest checkpoint and writes
<workdir>/eval/metrics.json and report.md with figures; `evaluate_state` does the same for a
state already in memory (train.train_and_evaluate at the end of training).
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from moe_ebm_jax import aggregation
from moe_ebm_jax import figures as figures_lib
from moe_ebm_jax import generation
from moe_ebm_jax import input_pipeline
from moe_ebm_jax import log_setup
from moe_ebm_jax import metric_logging
from moe_ebm_jax import model_state
from moe_ebm_jax import parallel

# FID compares Gaussians fitted to the 2,048-d Inception pool3 features: with fewer samples per
# set the covariance is rank-deficient and FID is biased upwards by an amount that depends on
# the model, so numbers below this do not rank models.
MIN_RANKING_FID_SAMPLES = 2048
PAPER_FID_SAMPLES = 10_000


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


def batch_images(batch, names) -> np.ndarray:
  """A batch's image modalities stacked: (B, M, H, W, C) in the order of `names`."""
  return np.stack([np.asarray(batch['x'][n]) for n in names], axis=1)


class Evaluator:
  """Jitted generation functions of one model, and coherence over a test set."""

  def __init__(self, config, model: model_state.Model, classify, scored=None):
    """classify: decodes {name: (N, *shape)} -> predicted classes int (N, M) (-1: not scored);
    scored: bool per modality, whether its predictions count (None: the specs' coherence)."""
    self.config = config
    self.model = model
    self.classify = classify
    specs = model.vae.modalities
    self.scored = tuple(scored) if scored is not None else tuple(
        s.coherence != 'none' for s in specs)
    self.images_of_one_shape = (all(s.kind == 'image' for s in specs) and
                                len({s.shape for s in specs}) == 1)
    self._conditional = {
        post_ld: jax.jit(functools.partial(generation.conditional_generate, model=model,
                                           post_ld=post_ld))
        for post_ld in ((False, True) if model.has_ebm else (False,))}
    self._joint = jax.jit(functools.partial(generation.joint_generate, model=model,
                                            num_samples=config.eval_batch_size))
    # What the classifiers see: the MMVAE+ reference classifies the decoders' raw means
    # (eval.clip_for_coherence=False); figures and FID always use images clipped to [0, 1].
    clip = config.eval.clip_for_coherence
    if clip or not any(s.kind == 'image' for s in specs):  # The same functions: compile once.
      self._coherence_conditional, self._coherence_joint = self._conditional, self._joint
    else:
      self._coherence_conditional = {
          post_ld: jax.jit(functools.partial(generation.conditional_generate, model=model,
                                             post_ld=post_ld, clip=clip))
          for post_ld in self.ld_modes}
      self._coherence_joint = jax.jit(functools.partial(
          generation.joint_generate, model=model, num_samples=config.eval_batch_size, clip=clip))

  def stack(self, decodes) -> np.ndarray:
    """Decodes of image modalities of one shape {name: (N, H, W, C)} -> (N, M, H, W, C)."""
    return np.asarray(generation.stack_images(decodes, self.model.vae.names))

  @property
  def ld_modes(self) -> tuple[bool, ...]:
    return tuple(self._conditional)

  def coherence(self, state, batches, key: jax.Array, *, num_joint: int,
                cross_only: bool = False) -> dict[str, Any]:
    """All coherence numbers over `batches` (dicts with 'x', 'label') and `num_joint`
    prior samples (0: no joint coherence). `cross_only` scores only the single-source subsets:
    the MMVAE+ cross coherence without the MoPoE protocol's larger subsets (M instead of
    2^M - 2 generations per batch)."""
    m = self.model.vae.num_modalities
    all_subsets = [(s,) for s in range(m)] if cross_only else subsets(m)
    # correct[ld][subset] = (number correct per target modality, count)
    hits = {ld: {s: np.zeros(m) for s in all_subsets} for ld in self.ld_modes}
    count = 0
    start = time.time()
    batches = list(batches)
    for i, batch in enumerate(batches):
      x, labels = jax.tree.map(jnp.asarray, batch['x']), np.asarray(batch['label'])
      for ld in self.ld_modes:
        for j, s in enumerate(all_subsets):
          mask = jnp.asarray(np.isin(np.arange(m), s))
          k = jax.random.fold_in(jax.random.fold_in(key, i), j * 2 + int(ld))
          decodes, _, _ = self._coherence_conditional[ld](state, x, mask, k)
          predicted = np.asarray(self.classify(decodes))
          hits[ld][s] += (predicted == labels[:, None]).sum(axis=0)
      count += len(labels)
      elapsed = time.time() - start
      logging.info('coherence: batch %d/%d, %.1f s, ETA %s', i + 1, len(batches), elapsed,
                   metric_logging.format_duration(elapsed / (i + 1) * (len(batches) - i - 1)))
    results: dict[str, Any] = {'num_test_examples': count}
    scored = np.asarray(self.scored)
    for ld in self.ld_modes:
      tag = _tag(self.model, ld)
      accuracy = {s: float(np.mean([hits[ld][s][d] / count for d in range(m)
                                    if d not in s and scored[d]]))
                  for s in all_subsets if any(scored[d] for d in range(m) if d not in s)}
      pairs = np.zeros((m, m))
      for src in range(m):
        pairs[src] = hits[ld][(src,)] / count
      results[tag] = {
          'cross_coherence': cross_coherence(pairs, scored),
          'cross_coherence_matrix': pairs.round(4).tolist(),  # [source][target]
          'subset_coherence': {str(k): v for k, v in subset_coherence(accuracy).items()},
      }
    if not num_joint:
      return results
    predictions = []
    n = 0
    start = time.time()
    while n < num_joint:
      samples, _ = self._coherence_joint(state, jax.random.fold_in(key, 10_000 + n))
      predictions.append(np.asarray(self.classify(samples))[:, scored])
      n += len(predictions[-1])
      elapsed = time.time() - start
      logging.info('joint coherence: %d/%d samples, %.1f s, ETA %s', min(n, num_joint),
                   num_joint, elapsed, metric_logging.format_duration(
                       elapsed / min(n, num_joint) * max(num_joint - n, 0)))
    predictions = np.concatenate(predictions)[:num_joint]
    results['joint_coherence'] = joint_coherence(predictions)
    results['joint_class_share'] = [round(s, 4) for s in joint_class_share(predictions)]
    results['num_joint_samples'] = int(len(predictions))
    return results

  def figures(self, state, x, key: jax.Array, out_dir: str, data=None) -> dict[str, str]:
    """Writes the report's pictures as titled, labelled PNGs; returns {name: file name}.
    x: the first examples of the test split {name: (n, *shape)}, one row each; data: more of
    them with their labels ({name: (N, *shape)}, (N,)) for the scatter plots. Every modality
    is shown in its own form (figures.py: images as images, classes as text, vectors as bars);
    2-D vector modalities also get a scatter plot of data against joint samples."""
    os.makedirs(out_dir, exist_ok=True)
    vae = self.model.vae
    m, specs, names = vae.num_modalities, vae.modalities, vae.names
    n = len(next(iter(x.values())))
    name = self.config.model.name
    tests = [f'test {i + 1}' for i in range(n)]
    files = {}
    joint, trajectory = jax.jit(functools.partial(
        generation.joint_generate, model=self.model, num_samples=n, keep_trajectory=True))(
            state, key)
    joint = jax.device_get(joint)
    size = figures_lib.tile_size(specs)  # One tile size for every modality, side by side.
    files['joint'] = self._save(
        out_dir, 'joint_samples.png', figures_lib.tiles(specs, joint, size),
        title=f'Joint samples of {name}: {self._prior_z_wording()}, each w_m ~ p(w)',
        col_labels=list(names), row_labels=[f'sample {i + 1}' for i in range(n)])
    x = jax.tree.map(jnp.asarray, x)
    for src in range(m):
      mask = jnp.zeros((m,), bool).at[src].set(True)
      decodes, _, _ = self._conditional[False](state, x, mask, jax.random.fold_in(key, src))
      tiles = np.concatenate([
          figures_lib.tiles(specs[src:src + 1], {names[src]: x[names[src]]}, size),
          figures_lib.tiles(specs, jax.device_get(decodes), size)], axis=1)
      z_from = f'z ~ q(z | {names[src]})' + (', pre-LD' if self.model.has_ebm else '')
      files[f'cross_from_{names[src]}'] = self._save(
          out_dir, f'cross_from_{names[src]}.png', tiles,
          title=f'Cross generation from {names[src]} ({name}; {z_from}, w ~ p(w))',
          col_labels=[f'source {names[src]}'] + list(names), row_labels=tests)
    if self.model.has_ebm:
      mask = jnp.zeros((m,), bool).at[0].set(True)
      k = jax.random.fold_in(key, 99)
      pre, _, _ = self._conditional[False](state, x, mask, k)
      post, _, _ = self._conditional[True](state, x, mask, k)
      rows = np.concatenate([figures_lib.tiles(specs[:1], {names[0]: x[names[0]]}, size),
                             figures_lib.tiles(specs, jax.device_get(pre), size),
                             figures_lib.tiles(specs, jax.device_get(post), size)], axis=1)
      # 'pre m0' rather than 'pre-LD m0': a label must fit one 56-px column.
      files['pre_post_ld'] = self._save(
          out_dir, f'pre_vs_post_ld_from_{names[0]}.png', rows,
          title=f'From {names[0]} ({name}): pre-LD decodes (z ~ q) vs post-LD decodes (z after '
                f'{self.model.posterior_steps}-step posterior Langevin)',
          col_labels=([f'source {names[0]}'] + [f'pre {d}' for d in names] +
                      [f'post {d}' for d in names]),
          row_labels=tests)
      files['prior_trajectory'] = self._trajectory_figure(state, trajectory, out_dir)
    planar = [d for d, spec in enumerate(specs) if spec.kind == 'vector' and spec.shape == (2,)]
    if planar:  # One set of joint samples, classified once, for every scatter plot.
      many = jax.device_get(self._joint(state, jax.random.fold_in(key, 7))[0])
      read = np.asarray(self.classify(many))
      points, labels = (x, None) if data is None else data
    for d in planar:
      spec = specs[d]
      samples, classes = np.asarray(many[spec.name]), read[:, d]
      files[f'scatter_{spec.name}'] = self._save_image(
          out_dir, f'scatter_{spec.name}.png', figures_lib.scatter_panels(
              [('test data, coloured by label', np.asarray(points[spec.name]), labels),
               ('joint samples, coloured by the class read', samples, classes)],
              title=f'{spec.name} of {name}: test data vs joint samples '
                    f'({self._prior_z_wording()})'))
    return files

  def _prior_z_wording(self) -> str:
    """Where joint generation's z comes from, for figure titles."""
    if not self.model.has_ebm:
      return 'z ~ p(z)'
    if not self.model.prior_steps:
      return 'z ~ p0(z), no prior Langevin'
    start = ' from persistent chains' if self.model.persistent_chains else ''
    return f'z from {self.model.prior_steps}-step prior Langevin{start}'

  def _trajectory_figure(self, state, trajectory, out_dir: str) -> str:
    """Decodes of modality 0 along the prior chain: rows are chains, columns chain steps."""
    vae = self.model.vae
    steps = trajectory.shape[0]
    picks = np.unique(np.linspace(0, steps - 1, num=min(steps, 8)).round().astype(int))
    z = trajectory[picks][:, :4]  # (T, chains, Dz)
    t, chains = z.shape[:2]
    w = jnp.zeros((vae.num_modalities, t * chains, vae.latent_w))  # The median of p(w).
    decodes = generation.decode_shared(self.model, state.vae_params, w,
                                       jnp.reshape(z, (t * chains, -1)))
    spec = vae.modalities[0]
    first = jax.device_get(decodes[spec.name])
    tiles = figures_lib.tiles((spec,), {spec.name: first})[:, 0]  # (T * chains, H, W, 3)
    tiles = tiles.reshape((t, chains) + tiles.shape[1:]).transpose(1, 0, 2, 3, 4)
    # trajectory[i] is the state after step i + 1 (langevin.sample).
    return self._save(
        out_dir, 'prior_langevin_trajectory.png', tiles,
        title=f'Prior Langevin chains of {self.config.model.name}: {spec.name} decoded from z '
              'along the chain, w at the median of p(w)',
        col_labels=[f'step {i + 1}' for i in picks],
        row_labels=[f'chain {c + 1}' for c in range(tiles.shape[0])])

  @staticmethod
  def _save_image(out_dir: str, name: str, image: np.ndarray) -> str:
    """Writes a finished picture (H, W, 3) uint8 (process 0 only, as `_save`)."""
    if jax.process_index() == 0:
      metric_logging.save_png(os.path.join(out_dir, name), image)
    return name

  @staticmethod
  def _save(out_dir: str, name: str, tiles: np.ndarray, **labels) -> str:
    """Writes tiles (rows, cols, 28, 28, 3) as metric_logging.labelled_grid(tiles, **labels).

    Every process computes the tiles (the generation is compiled over every device); process 0
    alone writes them, so that processes sharing a workdir never write one file at once.
    """
    if jax.process_index() == 0:
      metric_logging.save_png(os.path.join(out_dir, name),
                              metric_logging.labelled_grid(tiles, **labels))
    return name


def _chunked(fn, images: np.ndarray, chunk: int) -> np.ndarray:
  """fn over `images` in fixed-size chunks (the last one zero-padded): one compiled shape."""
  out = []
  for i in range(0, len(images), chunk):
    part = np.asarray(images[i:i + chunk])
    n = len(part)
    if n < chunk:
      part = np.concatenate([part, np.zeros((chunk - n,) + part.shape[1:], part.dtype)])
    out.append(np.asarray(fn(part))[:n])
  return np.concatenate(out)


class FidScorer:
  """FID of generated images against per-modality reference statistics of test images.

  features: images (N, 28, 28, 3) in [0, 1] -> (N, D) features (fid.make_feature_fn for the
  standard network; tests inject cheaper ones). reference: per modality (mu (D,), sigma (D, D)).
  """

  def __init__(self, features, reference: list[tuple[np.ndarray, np.ndarray]], chunk: int):
    self.features = features
    self.reference = reference
    self.chunk = chunk
    self.num_images = 0
    self.seconds = 0.0

  def __call__(self, images: np.ndarray, modality: int) -> float:
    """FID of `images` (N, 28, 28, 3) against modality `modality`'s reference."""
    start = time.time()
    from moe_ebm_jax import fid  # pylint: disable=g-import-not-at-top
    mu, sigma = fid.statistics(_chunked(self.features, images, self.chunk))
    self.num_images += len(images)
    self.seconds += time.time() - start
    return fid.frechet_distance(mu, sigma, *self.reference[modality])


def reference_statistics(features, images: np.ndarray, chunk: int
                         ) -> list[tuple[np.ndarray, np.ndarray]]:
  """Per-modality FID statistics of test tuples (N, M, 28, 28, 3)."""
  from moe_ebm_jax import fid  # pylint: disable=g-import-not-at-top
  n, m = images.shape[:2]
  stats = []
  start = time.time()
  for d in range(m):
    stats.append(fid.statistics(_chunked(features, images[:, d], chunk)))
    elapsed = time.time() - start
    logging.info('FID reference statistics: m%d done (%d/%d sets of %d), %.1f s, %.1f images/s, '
                 'ETA %s', d, d + 1, m, n, elapsed, n * (d + 1) / max(elapsed, 1e-9),
                 metric_logging.format_duration(elapsed / (d + 1) * (m - d - 1)))
  return stats


def cached_reference_statistics(config, features, images: np.ndarray, chunk: int,
                                cache_dir: str) -> list[tuple[np.ndarray, np.ndarray]]:
  """reference_statistics of the standard FID network, cached by dataset fingerprint and N."""
  from moe_ebm_jax import classifiers  # pylint: disable=g-import-not-at-top
  _, fingerprint = classifiers.cache_dir_for(config.data)
  n, m = images.shape[:2]
  path = os.path.join(cache_dir, 'reference', f'polymnist-{fingerprint[:16]}-test{n}-m{m}.npz')
  if os.path.exists(path):
    try:
      with np.load(path, allow_pickle=False) as f:
        if str(f['fingerprint']) == fingerprint and int(f['count']) == n:
          logging.info('FID: reference statistics of %d test images from %s', n, path)
          return [(f[f'mu{i}'], f[f'sigma{i}']) for i in range(m)]
    except (OSError, ValueError, KeyError) as e:
      logging.warning('FID: ignoring unreadable reference statistics %s: %s', path, e)
  logging.info('FID: computing reference statistics of %d test images per modality', n)
  stats = reference_statistics(features, images, chunk)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  arrays = {'fingerprint': np.asarray(fingerprint), 'count': np.asarray(n)}
  for i, (mu, sigma) in enumerate(stats):
    arrays[f'mu{i}'], arrays[f'sigma{i}'] = mu, sigma
  tmp = path + f'.tmp{os.getpid()}.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
  return stats


def fid_scores(evaluator: Evaluator, state, test_images: np.ndarray, key: jax.Array,
               scorer: FidScorer, *, batch_size: int) -> dict[str, Any]:
  """Joint FID and cross FID (method.md section 5) with N = len(test_images) samples each.

  Joint: N joint samples, FID per modality, averaged. Cross, per LD mode: for every source s and
  target d (self-reconstruction d = s included) the decodes of d from the N test tuples' x_s;
  FID per target averaged over sources, then over targets.
  """
  m = evaluator.model.vae.num_modalities
  n = len(test_images)
  results: dict[str, Any] = {'num_samples': n}
  start = time.time()
  total = m * (1 + m * len(evaluator.ld_modes))  # Sets of N generated images to score.
  done = 0

  def progress(what):
    nonlocal done
    done += 1
    elapsed = time.time() - start
    logging.info('FID: %s done (%d/%d sets of %d), %.1f s, %.1f images/s, ETA %s', what, done,
                 total, n, elapsed, scorer.num_images / max(scorer.seconds, 1e-9),
                 metric_logging.format_duration(elapsed / done * (total - done)))

  joint, i = [], 0
  while sum(len(j) for j in joint) < n:
    samples, _ = evaluator._joint(state, jax.random.fold_in(key, i))  # pylint: disable=protected-access
    joint.append(evaluator.stack(samples))
    i += 1
  joint = np.concatenate(joint)[:n]
  per_modality = []
  for d in range(m):
    per_modality.append(scorer(joint[:, d], d))
    progress(f'joint m{d}')
  results['joint_fid'] = float(np.mean(per_modality))
  results['joint_fid_per_modality'] = [round(v, 4) for v in per_modality]
  for ld in evaluator.ld_modes:
    matrix = np.zeros((m, m))
    for src in range(m):
      mask = jnp.zeros((m,), bool).at[src].set(True)
      decodes = []
      for b in range(0, n, batch_size):
        k = jax.random.fold_in(jax.random.fold_in(key, 1000 + src), b)
        out, _, _ = evaluator._conditional[ld](  # pylint: disable=protected-access
            state, jnp.asarray(test_images[b:b + batch_size]), mask, k)
        decodes.append(evaluator.stack(out))
      decodes = np.concatenate(decodes)
      for d in range(m):
        matrix[src, d] = scorer(decodes[:, d], d)
        progress(f'{_tag(evaluator.model, ld)} m{src}->m{d}')
    per_target = matrix.mean(axis=0)  # Over all sources, self-reconstruction included.
    results[_tag(evaluator.model, ld)] = {
        'cross_fid': float(per_target.mean()),
        'cross_fid_per_target': per_target.round(4).tolist(),
        'cross_fid_matrix': matrix.round(4).tolist(),  # [source][target]
    }
  results['num_feature_images'] = scorer.num_images
  results['feature_images_per_second'] = scorer.num_images / max(scorer.seconds, 1e-9)
  return results


def _tag(model, ld: bool) -> str:
  return 'post_ld' if ld else ('pre_ld' if model.has_ebm else 'q')


def write_report(out_dir: str, metrics: dict[str, Any], figures: dict[str, str]) -> None:
  """metrics.json and a Markdown report with the table in the layout of the paper's Table 1."""
  write_metrics(out_dir, metrics)
  c = metrics['coherence']
  m = len(c[next(t for t in ('q', 'pre_ld', 'post_ld') if t in c)]['cross_coherence_matrix'])
  names = metrics.get('modalities') or [f'm{i}' for i in range(m)]  # Older metrics: none kept.
  fid_metrics = metrics.get('fid')
  fmt = lambda v, spec: 'n/a' if v is None else format(v, spec)
  tags = [t for t in ('q', 'pre_ld', 'post_ld') if t in c]
  lines = [f"# Evaluation of {metrics['model']} at step {metrics['step']}", '']
  if metrics.get('failed'):
    lines += [f"**This evaluation stopped part way** ({metrics['failed']}): the numbers below "
              'are all it computed; the figures are missing.', '']
  lines += [f"Coherence: {c['num_test_examples']} test examples (cross); "
            f"{c.get('num_joint_samples', 0)} joint samples.  ",
            _classifier_line(metrics['classifiers'], names)]
  weak = metrics.get('weak_scorers') or {}
  if weak.get('accuracies'):
    lines += ['', '**Coherence read through weak classifiers**: ' + ', '.join(
        f'{n} (test accuracy {a:.3f})' for n, a in weak['accuracies'].items()) +
              f", under {weak['threshold']} (eval.min_scorer_accuracy): the coherence numbers "
              'that involve them say as much about the classifier as about the model. A better '
              'reader: modalities.register_coherence (docs/usage.md).']
  lines += ['', *_fid_note(metrics, tags)]
  n_fid = fid_metrics['num_samples'] if fid_metrics else 0
  # Labelled where the numbers are, so that a copied table keeps its warning.
  biased = (f' (N = {n_fid:,} < {MIN_RANKING_FID_SAMPLES:,}: biased, does not rank models)'
            if 0 < n_fid < MIN_RANKING_FID_SAMPLES else '')
  no_fid = 'not computed'
  lines += ['', f'| model | joint coherence | cross coherence | joint FID{biased} | '
                f'cross FID{biased} |', '|---|---|---|---|---|']
  for tag in tags:
    name = metrics['model'] + {'q': '', 'pre_ld': ' pre-LD', 'post_ld': ' post-LD'}[tag]
    joint_row = tag != 'pre_ld'  # Joint generation does not use the posterior.
    joint_coh = c['joint_coherence'] if joint_row else None
    if fid_metrics:
      joint_fid = fmt(fid_metrics['joint_fid'] if joint_row else None, '.2f')
      cross_fid = fmt(fid_metrics[tag]['cross_fid'], '.2f')
    else:
      joint_fid, cross_fid = (no_fid if joint_row else 'n/a'), no_fid
    lines.append(f"| {name} | {fmt(joint_coh, '.3f')} | {c[tag]['cross_coherence']:.3f} | "
                 f"{joint_fid} | {cross_fid} |")
  if c.get('joint_class_share'):  # Absent in reports written before it existed.
    lines += ['', 'Joint samples whose modalities agree, by the class they agree on (fractions of '
                  'all joint samples; they sum to the joint coherence): ' +
              ', '.join(f'{k}: {v:.3f}' for k, v in enumerate(c['joint_class_share'])) + '.']
  lines += ['', 'Conditional coherence per number of observed modalities (MoPoE protocol):', '']
  lines += ['| inputs | ' + ' | '.join(tags) + ' |', '|---' * (len(tags) + 1) + '|']
  sizes = list(c[tags[0]]['subset_coherence'])
  for size in sizes:
    lines.append(f'| {size} | ' + ' | '.join(f"{c[t]['subset_coherence'][size]:.3f}"
                                              for t in tags) + ' |')
  lines += ['', 'Cross coherence per source (rows) and target (columns):', '']
  for tag in tags:
    lines += [f'{tag}:', '', _matrix_table(c[tag]['cross_coherence_matrix'], '.3f', True, names),
              '']
  if fid_metrics:
    lines += [f'Joint FID per modality{biased}: ' + ', '.join(
        f'{names[i]} {v:.2f}' for i, v in enumerate(fid_metrics['joint_fid_per_modality'])) + '.',
              '',
              'Cross FID per source (rows) and target (columns), self-reconstruction on the '
              f'diagonal{biased}:', '']
    for tag in tags:
      lines += [f'{tag}:', '', _matrix_table(fid_metrics[tag]['cross_fid_matrix'], '.2f', False,
                                             names), '']
  captions = {'joint': 'Joint samples (rows: samples; columns: modalities).',
              'pre_post_ld': 'From the first modality: source, pre-LD decodes, post-LD decodes.',
              'prior_trajectory': 'Prior Langevin chains (rows), modality 0 along the chain.'}
  for name, file in figures.items():
    if name.startswith('scatter_'):
      captions[name] = (f'{name[8:]}: test data and joint samples (coloured by the class their '
                        'decodes are read as).')
    caption = captions.get(name, f'Cross generation from {name.rsplit("_", 1)[-1]} (rows: test '
                                 'examples): the source, then every modality.')
    lines += [f'{caption}', '', f'![{name}]({file})', '']
  lines.append(f"Evaluation took {metrics['eval_seconds']:.0f} s.")
  with open(os.path.join(out_dir, 'report.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def _classifier_line(classifiers: dict[str, Any], names) -> str:
  """The coherence classifiers' test accuracy per modality: coherence is only as good as they."""
  readings = classifiers.get('readings')
  if readings:  # coherence_scorers: how each modality is read.
    return 'Coherence reads ' + '; '.join(
        f'{name}: ' + (r if isinstance(r, str) else
                       f"{r['classifier']} classifier, test accuracy {r['test_accuracy']:.4f}")
        for name, r in readings.items()) + '.'
  accuracies = classifiers.get('accuracies')
  if not accuracies:
    return (f"Coherence classifiers: {classifiers.get('description', 'injected by the caller')}"
            ' (no test accuracies recorded).')
  architecture = classifiers.get('architecture')
  return ('Coherence classifiers' + (f' ({architecture})' if architecture else '') +
          ', test accuracy per modality: ' +
          ', '.join(f'{names[i]} {a:.4f}' for i, a in enumerate(accuracies)) + '.')


def _fid_note(metrics: dict[str, Any], tags: list[str]) -> list[str]:
  """What the FID numbers are (or why there are none), for a reader of the report."""
  fid_metrics = metrics.get('fid')
  why = (f'FID compares Gaussians fitted to the {MIN_RANKING_FID_SAMPLES:,}-d Inception pool3 '
         f'features, so from fewer than ~{MIN_RANKING_FID_SAMPLES:,} samples per set their '
         'covariance is rank-deficient and FID is biased upwards by an amount that depends on '
         f'the model: such numbers do not rank models (the paper uses N = '
         f'{PAPER_FID_SAMPLES:,}).')
  again = (f'`--mode=eval --config.eval.num_fid_samples={PAPER_FID_SAMPLES}` on this workdir, '
           f'on an accelerator (configs/polymnist.py keeps N = {PAPER_FID_SAMPLES:,})')
  if not fid_metrics:
    m = len(metrics['coherence'][tags[0]]['cross_coherence_matrix'])
    ld = 2 if 'post_ld' in tags else 1
    sets = m * (1 + m * ld)
    images = (sets + m) * PAPER_FID_SAMPLES  # Generated sets, then the test reference once.
    cross = f'{m * m} (source, target) sets' + (', pre- and post-LD' if ld == 2 else '')
    return [
        '**FID: not computed** (eval.num_fid_samples = 0). ' + why + ' The standard FID network '
        f'runs at ~4-8 images/s on a 2-core CPU, and N = {PAPER_FID_SAMPLES:,} per set over this '
        f'model\'s {sets} sets (joint: {m} modalities; cross: {cross}) plus the reference '
        f'statistics of {m} x {PAPER_FID_SAMPLES:,} test images is {images:,} images, '
        f'~{images / 8 / 3600:.0f}-{images / 4 / 3600:.0f} hours there. Run FID with ' + again +
        '.']
  n = fid_metrics['num_samples']
  head = (f"FID ({metrics.get('fid_network', 'unknown network')}): {n:,} generated vs {n:,} test "
          'images per modality and set')
  if n < MIN_RANKING_FID_SAMPLES:
    return [f'{head}. **N = {n:,} < {MIN_RANKING_FID_SAMPLES:,}: biased, does not rank models**: '
            'the FID numbers below are diagnostics, not results. ' + why + ' For results, '
            'run ' + again + '.']
  if n < PAPER_FID_SAMPLES:
    return [f'{head} (the paper: {PAPER_FID_SAMPLES:,}). FID falls as N grows: compare runs at '
            'the same N.']
  return [f'{head}, as the paper.']


def _matrix_table(matrix, spec: str, blank_diagonal: bool, names) -> str:
  m = len(matrix)
  rows = ['| source | ' + ' | '.join(names) + ' |', '|---' * (m + 1) + '|']
  for s in range(m):
    cells = ['-' if blank_diagonal and s == d else format(matrix[s][d], spec) for d in range(m)]
    rows.append(f'| {names[s]} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(rows)


def _test_batches(config, count: int | None) -> list[dict[str, np.ndarray]]:
  """The first `count` test tuples (None: all) as eval batches."""
  batches, seen = [], 0
  for batch in input_pipeline.eval_dataset(config):
    if count is not None and seen >= count:
      break
    if count is not None and seen + len(batch['label']) > count:
      batch = jax.tree.map(lambda v: v[:count - seen], batch)
    batches.append(batch)
    seen += len(batch['label'])
  return batches


def restore_latest(config, workdir: str) -> tuple[model_state.Model, Any]:
  """(model, model_state.TrainState) of the latest checkpoint in `workdir`, read-only.

  The config must match the run's at model_state.COMPATIBLE_KEYS (as for a resume); sampler settings
  such as ebm.posterior_steps may differ (that is how a trained model is probed with others).
  """
  from moe_ebm_jax import checkpointing  # pylint: disable=g-import-not-at-top
  if os.path.exists(os.path.join(workdir, checkpointing.CONFIG_FILENAME)):
    # The model must be the one that was trained (same keys as a resume); nothing is written.
    checkpointing.check_or_write_run_config(
        workdir, config, model_state.COMPATIBLE_KEYS, model_state.ADDED_KEY_DEFAULTS)
  model = model_state.make_model(config)
  abstract = model_state.abstract_state(config, model, parallel.make_mesh())
  ckpt = checkpointing.Checkpointer(workdir, keep_latest=config.keep_checkpoints,
                                    keep_best=config.keep_best_checkpoints)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f'no checkpoint in {workdir}: train first (--mode=train).')
  state, _ = ckpt.restore(abstract)
  ckpt.close()
  return model, state


def evaluate_run(config, workdir: str, classify=None, features=None) -> dict[str, Any]:
  """Evaluates the latest checkpoint in `workdir` (--mode=eval): `evaluate_state` of it.

  Args:
    classify, features: as `evaluate_state`.
  """
  log_setup.ensure_visible()  # A script's first call shows progress as main.py does.
  model, state = restore_latest(config, workdir)
  return evaluate_state(config, workdir, state, model=model, classify=classify,
                        features=features)


def evaluated_step(workdir: str) -> int | None:
  """The step whose whole evaluation <workdir>/eval/metrics.json holds; None if there is none
  (or it is unreadable, or an evaluation that stopped part way)."""
  try:
    with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
      metrics = json.load(f)
    return int(metrics['step']) if metrics.get('complete', True) else None
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return None


def write_metrics(out_dir: str, metrics: dict[str, Any]) -> None:
  """<out_dir>/metrics.json, replaced whole (process 0 only): a reader never sees half a file."""
  from moe_ebm_jax import classifiers  # pylint: disable=g-import-not-at-top
  if jax.process_index():
    return
  os.makedirs(out_dir, exist_ok=True)
  classifiers.atomic_write(out_dir, 'metrics.json',
                           lambda f: json.dump(metrics, f, indent=2, sort_keys=True), 'w')


def evaluate_state(config, workdir: str, state, *, model: model_state.Model | None = None,
                   classify=None, features=None) -> dict[str, Any]:
  """Evaluates `state` (a model_state.TrainState) of `workdir`'s run; writes <workdir>/eval/
  {metrics.json, report.md, *.png}. Phases: coherence, FID (if eval.num_fid_samples > 0),
  figures.

  Every process runs it alike (the generation functions are compiled over every device).

  Args:
    model: model_state.make_model(config), if the caller has it already.
    classify: decodes {name: (N, *shape)} -> predicted classes (N, M); None: the dataset's
      coherence scorer (coherence_scorers.py: classifiers trained on first use, cached).
    features: images (N, 28, 28, 3) in [0, 1] -> (N, D) FID features; None: the standard FID
      Inception (fid.py) with its reference statistics cached. Unused when
      config.eval.num_fid_samples is 0.
  """
  step = int(state.step)
  out_dir = os.path.join(workdir, 'eval')
  num_fid = config.eval.num_fid_samples
  limit = config.eval.num_test_examples
  logging.info('Evaluating step %d into %s: coherence (%s test tuples, %d joint samples), %s, '
               'figures.', step, out_dir, 'all' if limit is None else limit,
               config.eval.num_joint_samples,
               f'FID (N = {num_fid} per set)' if num_fid else 'no FID (eval.num_fid_samples = 0)')
  model = model or model_state.make_model(config)
  # Classifiers and the FID network load (or train / convert) only once a checkpoint is known.
  classifier_info: dict[str, Any] = {'description': 'injected by the caller'}
  scored = None
  names = list(model.vae.names)
  weak = {}
  if classify is None:
    from moe_ebm_jax import coherence_scorers  # pylint: disable=g-import-not-at-top
    scorer = coherence_scorers.make_scorer(config)
    classify, scored, classifier_info = scorer.classify, scorer.scored, scorer.info
    weak = coherence_scorers.weak_readers(classifier_info, names, config.eval.min_scorer_accuracy)
    for name, accuracy in weak.items():
      logging.warning('Coherence reads %r through a classifier of test accuracy %.3f, under %.2f '
                      '(eval.min_scorer_accuracy): coherence through it is unreliable. A better '
                      'one: modalities.register_coherence (docs/usage.md).', name, accuracy,
                      config.eval.min_scorer_accuracy)
  specs = model.vae.modalities
  if num_fid and (not all(s.is_rgb_image for s in specs) or len({s.shape for s in specs}) > 1):
    logging.info('FID: skipped; it compares RGB images, and %s has modalities %s.',
                 config.data.name, [(s.name, s.kind, s.shape) for s in specs])
    num_fid = 0
  fid_network, fid_cache = 'injected by the caller', None
  if num_fid and features is None:
    from moe_ebm_jax import fid  # pylint: disable=g-import-not-at-top
    fid_cache = config.eval.fid_cache_dir or fid.default_cache_dir()
    features = fid.make_feature_fn(fid.load_params(fid_cache))
    fid_network = 'Inception-v3 2015-12-05, pool3'
  evaluator = Evaluator(config, model, classify, scored)
  batches = _test_batches(config, limit)
  key = jax.random.PRNGKey(config.seed + 2)
  start = time.time()
  phases = 2 + bool(num_fid)
  logging.info('Evaluation 1/%d: coherence.', phases)
  coherence = evaluator.coherence(state, batches, key, num_joint=config.eval.num_joint_samples)
  logging.info('Evaluation 1/%d: coherence done in %s.', phases,
               metric_logging.format_duration(time.time() - start))
  metrics = {'model': config.model.name, 'step': step, 'modalities': names,
             'coherence': coherence, 'classifiers': classifier_info,
             'weak_scorers': {'threshold': config.eval.min_scorer_accuracy, 'accuracies': weak},
             'complete': False}  # Until the figures are done: a relaunch then evaluates again.
  write_metrics(out_dir, metrics)  # Each phase's numbers are kept as soon as they exist.
  if num_fid:
    phase_start = time.time()
    logging.info('Evaluation 2/3: FID, N = %d per set.', num_fid)
    fid_batches = _test_batches(config, num_fid)
    test_images = np.concatenate([batch_images(b, model.vae.names) for b in fid_batches])
    if len(test_images) < num_fid:
      logging.warning('FID: the test split has only %d examples; using N = %d, not %d.',
                      len(test_images), len(test_images), num_fid)
    if len(test_images) < MIN_RANKING_FID_SAMPLES:
      logging.warning('FID: N = %d < %d: biased upwards, does not rank models.',
                      len(test_images), MIN_RANKING_FID_SAMPLES)
    chunk = config.eval.fid_batch_size
    if fid_cache:
      reference = cached_reference_statistics(config, features, test_images, chunk, fid_cache)
    else:
      reference = reference_statistics(features, test_images, chunk)
    metrics['fid'] = fid_scores(evaluator, state, test_images, jax.random.fold_in(key, 2),
                                FidScorer(features, reference, chunk),
                                batch_size=config.eval_batch_size)
    metrics['fid_network'] = fid_network
    write_metrics(out_dir, metrics)
    logging.info('Evaluation 2/3: FID done in %s.',
                 metric_logging.format_duration(time.time() - phase_start))
  phase_start = time.time()
  logging.info('Evaluation %d/%d: figures.', phases, phases)
  try:
    figures = evaluator.figures(state, jax.tree.map(lambda a: a[:config.num_image_samples],
                                                   batches[0]['x']),
                                jax.random.fold_in(key, 1), out_dir,
                                data=(batches[0]['x'], batches[0]['label']))
  except Exception as e:
    metrics['eval_seconds'] = time.time() - start
    metrics['failed'] = f'figures: {type(e).__name__}: {e}'
    if jax.process_index() == 0:  # One writer of report.md, as below.
      write_report(out_dir, metrics, {})
    logging.error('Evaluation: the figures failed; the numbers are in %s (metrics.json, '
                  'report.md).', out_dir)
    raise
  logging.info('Evaluation %d/%d: figures done in %s.', phases, phases,
               metric_logging.format_duration(time.time() - phase_start))
  metrics['eval_seconds'] = time.time() - start
  metrics['complete'] = True
  if jax.process_index() == 0:  # One writer of metrics.json and report.md (see Evaluator._save).
    write_report(out_dir, metrics, figures)
  ld_names = {'q': '', 'pre_ld': ' pre-LD', 'post_ld': ' post-LD'}
  summary = ', '.join(f"{coherence[t]['cross_coherence']:.3f}{ld_names[t]}"
                      for t in ('q', 'pre_ld', 'post_ld') if t in coherence)
  logging.info('Evaluation of step %d written to %s (report.md) in %s: joint coherence %.3f, '
               'cross coherence %s%s', step, out_dir,
               metric_logging.format_duration(metrics['eval_seconds']),
               coherence['joint_coherence'], summary,
               f", joint FID {metrics['fid']['joint_fid']:.2f} (N={num_fid})" if num_fid else '')
  return metrics
