"""FID of generated images (method.md section 5): statistics, their cache, FidEvaluator.

The feature network (the standard Inception, inception.py) is handed in as a function, so
tests inject cheaper ones.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from moe_ebm_jax import cache
from moe_ebm_jax import metric_logging
from moe_ebm_jax.evaluators import common
from moe_ebm_jax.evaluators import inception as fid_lib

# FID compares Gaussians fitted to the 2,048-d Inception pool3 features: with fewer samples per
# set the covariance is rank-deficient and FID is biased upwards by an amount that depends on
# the model, so numbers below this do not rank models.
MIN_RANKING_FID_SAMPLES = 2048
PAPER_FID_SAMPLES = 10_000
NETWORK = 'Inception-v3 2015-12-05, pool3'


def chunked(fn, images: np.ndarray, chunk: int) -> np.ndarray:
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

  features: images (N, H, W, 3) in [0, 1] -> (N, D) features (fid.make_feature_fn for the
  standard network; tests inject cheaper ones). reference: per modality (mu (D,), sigma (D, D)).
  """

  def __init__(self, features, reference: list[tuple[np.ndarray, np.ndarray]], chunk: int):
    self.features = features
    self.reference = reference
    self.chunk = chunk
    self.num_images = 0
    self.seconds = 0.0

  def __call__(self, images: np.ndarray, modality: int) -> float:
    """FID of `images` (N, H, W, 3) against modality `modality`'s reference."""
    start = time.time()
    mu, sigma = fid_lib.statistics(chunked(self.features, images, self.chunk))
    self.num_images += len(images)
    self.seconds += time.time() - start
    return fid_lib.frechet_distance(mu, sigma, *self.reference[modality])


def reference_statistics(features, images: np.ndarray, chunk: int, names=None
                         ) -> list[tuple[np.ndarray, np.ndarray]]:
  """Per-modality FID statistics of test tuples (N, M, H, W, 3)."""
  n, m = images.shape[:2]
  names = names or [f'm{d}' for d in range(m)]
  stats = []
  start = time.time()
  for d in range(m):
    stats.append(fid_lib.statistics(chunked(features, images[:, d], chunk)))
    elapsed = time.time() - start
    logging.info('FID reference statistics: %s done (%d/%d sets of %d), %.1f s, %.1f images/s, '
                 'ETA %s', names[d], d + 1, m, n, elapsed, n * (d + 1) / max(elapsed, 1e-9),
                 metric_logging.format_duration(elapsed / (d + 1) * (m - d - 1)))
  return stats


def cached_reference_statistics(dataset_name: str, fingerprint: str, features,
                                images: np.ndarray, chunk: int, cache_dir: str, names=None
                                ) -> list[tuple[np.ndarray, np.ndarray]]:
  """reference_statistics of the standard FID network, cached by the dataset's fingerprint
  and N."""
  n, m = images.shape[:2]
  path = os.path.join(cache_dir, 'reference', f'{dataset_name}-{fingerprint[:16]}-test{n}-m{m}.npz')
  if os.path.exists(path):
    try:
      with np.load(path, allow_pickle=False) as f:
        if str(f['fingerprint']) == fingerprint and int(f['count']) == n:
          logging.info('FID: reference statistics of %d test images from %s', n, path)
          return [(f[f'mu{i}'], f[f'sigma{i}']) for i in range(m)]
    except (OSError, ValueError, KeyError) as e:
      logging.warning('FID: ignoring unreadable reference statistics %s: %s', path, e)
  logging.info('FID: computing reference statistics of %d test images per modality', n)
  stats = reference_statistics(features, images, chunk, names)
  arrays = {'fingerprint': np.asarray(fingerprint), 'count': np.asarray(n)}
  for i, (mu, sigma) in enumerate(stats):
    arrays[f'mu{i}'], arrays[f'sigma{i}'] = mu, sigma
  cache.atomic_write(path, lambda f: np.savez(f, **arrays), 'wb')
  return stats


class FidEvaluator:
  """Joint FID and cross FID with N = len(test_images) samples each.

  Joint: N joint samples, FID per modality, averaged. Cross, per LdMode: for every source s and
  target d (self-reconstruction d = s included) the decodes of d from the N test tuples' x_s;
  FID per target averaged over sources, then over targets.

  Args:
    gen: the model's common.Generators.
    scorer: a FidScorer (features and the test images' reference statistics).
    test_images: (N, M, H, W, 3) in [0, 1], the test tuples the cross sets start from.
    batch_size: conditional generation's batch.
  """

  def __init__(self, gen: common.Generators, scorer: FidScorer, test_images: np.ndarray, *,
               batch_size: int):
    self.gen = gen
    self.scorer = scorer
    self.test_images = test_images
    self.batch_size = batch_size

  def run(self, state, key: jax.Array) -> dict[str, Any]:
    gen, scorer, test_images = self.gen, self.scorer, self.test_images
    names = gen.model.vae.names
    m, n = len(names), len(test_images)
    results: dict[str, Any] = {'num_samples': n}
    start = time.time()
    total = m * (1 + m * len(gen.modes))  # Sets of N generated images to score.
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
      samples, _ = gen.joint(state, jax.random.fold_in(key, i))
      joint.append(gen.stack(samples))
      i += 1
    joint = np.concatenate(joint)[:n]
    per_modality = []
    for d in range(m):
      per_modality.append(scorer(joint[:, d], d))
      progress(f'joint {names[d]}')
    results['joint_fid'] = float(np.mean(per_modality))
    results['joint_fid_per_modality'] = [round(v, 4) for v in per_modality]
    for mode in gen.modes:
      matrix = np.zeros((m, m))
      for src in range(m):
        mask = jnp.zeros((m,), bool).at[src].set(True)
        decodes = []
        for b in range(0, n, self.batch_size):
          k = jax.random.fold_in(jax.random.fold_in(key, 1000 + src), b)
          out, _, _ = gen.conditional[mode](
              state, jnp.asarray(test_images[b:b + self.batch_size]), mask, k)
          decodes.append(gen.stack(out))
        decodes = np.concatenate(decodes)
        for d in range(m):
          matrix[src, d] = scorer(decodes[:, d], d)
          progress(f'{mode.value} {names[src]}->{names[d]}')
      per_target = matrix.mean(axis=0)  # Over all sources, self-reconstruction included.
      results[mode.value] = {
          'cross_fid': float(per_target.mean()),
          'cross_fid_per_target': per_target.round(4).tolist(),
          'cross_fid_matrix': matrix.round(4).tolist(),  # [source][target]
      }
    results['num_feature_images'] = scorer.num_images
    results['feature_images_per_second'] = scorer.num_images / max(scorer.seconds, 1e-9)
    return results
