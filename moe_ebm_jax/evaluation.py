"""Evaluation: conditional and joint generation, coherence, and the report of a trained run.

Protocols (../shared/docs/method.md section 5):
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

`evaluate_run(config, workdir)` writes <workdir>/eval/metrics.json and report.md with figures.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from moe_ebm_jax import ebm as ebm_lib
from moe_ebm_jax import input_pipeline
from moe_ebm_jax import metric_logging
from moe_ebm_jax import models
from moe_ebm_jax import train as train_lib


def conditional_generate(state: train_lib.TrainState, images: jax.Array, subset: jax.Array,
                         key: jax.Array, *, model: train_lib.Model, post_ld: bool,
                         keep_trajectory: bool = False):
  """Decodes every modality given the modalities in `subset`.

  Args:
    images: (B, M, 28, 28, 3) in [0, 1]; only the rows of `subset` are read.
    subset: bool (M,), the observed modalities (at least one).
    post_ld: refine z by the posterior Langevin chain on the observed modalities.

  Returns:
    (decodes (B, M, 28, 28, 3) clipped to [0, 1], z (B, Dz), trajectory or None): modalities
    in the subset are decoded with their own posterior w, the others with w ~ p(w).
  """
  vae = model.vae
  k_pick, k_w, k_z, k_prior_w, k_ld = jax.random.split(key, 5)
  post = vae.encode(state.vae_params, images)  # (M, B, .)
  m, b = post.z_loc.shape[:2]
  w_q = post.w_loc + post.w_scale * jax.random.laplace(k_w, post.w_loc.shape)
  z_q = post.z_loc + post.z_scale * jax.random.laplace(k_z, post.z_loc.shape)
  logits = jnp.where(subset, 0.0, -jnp.inf)
  expert = jax.random.categorical(k_pick, logits, shape=(b,))
  z = z_q[expert, jnp.arange(b)]
  trajectory = None
  if post_ld:
    final, diag = ebm_lib.sample_posterior(
        vae, state.vae_params, model.energy, state.ebm_params, images, z, w_q, k_ld,
        num_steps=model.posterior_steps, step_size=model.posterior_step_size,
        noise_scale=model.noise_scale, latents=model.posterior_latents, observed=subset,
        keep_trajectory=keep_trajectory, unroll=model.langevin_unroll)
    z = final['z']
    if 'w' in final:
      w_q = jnp.moveaxis(final['w'], 1, 0)
    if keep_trajectory:
      trajectory = diag['trajectory']['z']  # (steps, B, Dz)
  w_prior = jax.random.laplace(k_prior_w, w_q.shape)
  w = jnp.where(subset[:, None, None], w_q, w_prior)
  latents = jnp.concatenate([w, jnp.broadcast_to(z[None], (m,) + z.shape)], axis=-1)
  decodes = jnp.clip(vae.decode(state.vae_params, latents), 0.0, 1.0)
  return jnp.moveaxis(decodes, 0, 1), z, trajectory


def joint_generate(state: train_lib.TrainState, key: jax.Array, *, model: train_lib.Model,
                   num_samples: int, keep_trajectory: bool = False):
  """Joint samples (N, M, 28, 28, 3) in [0, 1], and the prior chain's trajectory or None."""
  vae = model.vae
  k_prior, k_w = jax.random.split(key)
  trajectory = None
  if model.has_ebm:
    z, diag = ebm_lib.sample_prior(model.energy, state.ebm_params, k_prior, num_samples,
                                   vae.latent_z, num_steps=model.prior_steps,
                                   step_size=model.prior_step_size,
                                   noise_scale=model.noise_scale,
                                   keep_trajectory=keep_trajectory,
                                   unroll=model.langevin_unroll)
    if keep_trajectory:
      trajectory = diag['trajectory']
  else:
    z = jax.random.laplace(k_prior, (num_samples, vae.latent_z))
  m = vae.num_modalities
  w = jax.random.laplace(k_w, (m, num_samples, vae.latent_w))
  latents = jnp.concatenate([w, jnp.broadcast_to(z[None], (m,) + z.shape)], axis=-1)
  decodes = jnp.clip(vae.decode(state.vae_params, latents), 0.0, 1.0)
  return jnp.moveaxis(decodes, 0, 1), trajectory


def subsets(num_modalities: int) -> list[tuple[int, ...]]:
  """Every non-empty proper subset of range(M), by size then lexicographically."""
  return [s for size in range(1, num_modalities)
          for s in itertools.combinations(range(num_modalities), size)]


def cross_coherence(correct: np.ndarray) -> float:
  """MMVAE+ cross coherence from a (source, target) accuracy matrix (diagonal ignored):
  the mean over sources per target, then over targets."""
  m = correct.shape[0]
  off = ~np.eye(m, dtype=bool)
  per_target = [correct[off[:, d], d].mean() for d in range(m)]
  return float(np.mean(per_target))


def joint_coherence(predictions: np.ndarray) -> float:
  """Fraction of joint samples whose M predicted digits all agree: (N, M) -> float."""
  return float(np.mean(np.all(predictions == predictions[:, :1], axis=1)))


def subset_coherence(accuracy: dict[tuple[int, ...], float]) -> dict[int, float]:
  """MoPoE protocol: mean accuracy per subset size from {subset: accuracy on its targets}."""
  by_size: dict[int, list[float]] = {}
  for s, acc in accuracy.items():
    by_size.setdefault(len(s), []).append(acc)
  return {size: float(np.mean(v)) for size, v in sorted(by_size.items())}


class Evaluator:
  """Jitted generation functions of one model, and coherence over a test set."""

  def __init__(self, config, model: train_lib.Model, classify):
    """classify: images (N, M, 28, 28, 3) -> predicted digits int (N, M)."""
    self.config = config
    self.model = model
    self.classify = classify
    self._conditional = {
        post_ld: jax.jit(functools.partial(conditional_generate, model=model, post_ld=post_ld))
        for post_ld in ((False, True) if model.has_ebm else (False,))}
    self._joint = jax.jit(functools.partial(joint_generate, model=model,
                                            num_samples=config.eval_batch_size))

  @property
  def ld_modes(self) -> tuple[bool, ...]:
    return tuple(self._conditional)

  def coherence(self, state, batches, key: jax.Array, *, num_joint: int) -> dict[str, Any]:
    """All coherence numbers over `batches` (dicts with 'images', 'label') and `num_joint`
    prior samples."""
    m = self.model.vae.num_modalities
    all_subsets = subsets(m)
    # correct[ld][subset] = (number correct per target modality, count)
    hits = {ld: {s: np.zeros(m) for s in all_subsets} for ld in self.ld_modes}
    count = 0
    start = time.time()
    batches = list(batches)
    for i, batch in enumerate(batches):
      images, labels = jnp.asarray(batch['images']), np.asarray(batch['label'])
      for ld in self.ld_modes:
        for j, s in enumerate(all_subsets):
          mask = jnp.asarray(np.isin(np.arange(m), s))
          k = jax.random.fold_in(jax.random.fold_in(key, i), j * 2 + int(ld))
          decodes, _, _ = self._conditional[ld](state, images, mask, k)
          predicted = np.asarray(self.classify(decodes))
          hits[ld][s] += (predicted == labels[:, None]).sum(axis=0)
      count += len(labels)
      elapsed = time.time() - start
      logging.info('coherence: batch %d/%d, %.1f s, ETA %s', i + 1, len(batches), elapsed,
                   metric_logging.format_duration(elapsed / (i + 1) * (len(batches) - i - 1)))
    results: dict[str, Any] = {'num_test_examples': count}
    for ld in self.ld_modes:
      tag = 'post_ld' if ld else ('pre_ld' if self.model.has_ebm else 'q')
      accuracy = {s: float(np.mean([hits[ld][s][d] / count for d in range(m) if d not in s]))
                  for s in all_subsets}
      pairs = np.zeros((m, m))
      for src in range(m):
        pairs[src] = hits[ld][(src,)] / count
      results[tag] = {
          'cross_coherence': cross_coherence(pairs),
          'cross_coherence_matrix': pairs.round(4).tolist(),  # [source][target]
          'subset_coherence': {str(k): v for k, v in subset_coherence(accuracy).items()},
      }
    predictions = []
    n = 0
    while n < num_joint:
      samples, _ = self._joint(state, jax.random.fold_in(key, 10_000 + n))
      predictions.append(np.asarray(self.classify(samples)))
      n += samples.shape[0]
    predictions = np.concatenate(predictions)[:num_joint]
    results['joint_coherence'] = joint_coherence(predictions)
    results['num_joint_samples'] = int(len(predictions))
    return results

  def figures(self, state, images: np.ndarray, key: jax.Array, out_dir: str) -> dict[str, str]:
    """Writes the report's pictures as PNGs; returns {name: file name}."""
    os.makedirs(out_dir, exist_ok=True)
    m = self.model.vae.num_modalities
    n = images.shape[0]
    files = {}
    joint, trajectory = jax.jit(functools.partial(
        joint_generate, model=self.model, num_samples=n, keep_trajectory=True))(state, key)
    files['joint'] = self._save(out_dir, 'joint_samples.png', np.asarray(joint))
    images = jnp.asarray(images)
    for src in range(m):
      mask = jnp.zeros((m,), bool).at[src].set(True)
      decodes, _, _ = self._conditional[False](state, images, mask, jax.random.fold_in(key, src))
      tiles = np.concatenate([np.asarray(images[:, src:src + 1]), np.asarray(decodes)], axis=1)
      files[f'cross_from_m{src}'] = self._save(out_dir, f'cross_from_m{src}.png', tiles)
    if self.model.has_ebm:
      mask = jnp.zeros((m,), bool).at[0].set(True)
      k = jax.random.fold_in(key, 99)
      pre, _, _ = self._conditional[False](state, images, mask, k)
      post, _, _ = self._conditional[True](state, images, mask, k)
      rows = np.concatenate([np.asarray(images[:, :1]), np.asarray(pre), np.asarray(post)],
                            axis=1)
      files['pre_post_ld'] = self._save(out_dir, 'pre_vs_post_ld_from_m0.png', rows)
      files['prior_trajectory'] = self._trajectory_figure(state, trajectory, out_dir)
    return files

  def _trajectory_figure(self, state, trajectory, out_dir: str) -> str:
    """Decodes of modality 0 along the prior chain: rows are chains, columns chain steps."""
    steps = trajectory.shape[0]
    picks = np.unique(np.linspace(0, steps - 1, num=min(steps, 8)).round().astype(int))
    z = trajectory[picks][:, :4]  # (T, chains, Dz)
    w = jnp.zeros(z.shape[:2] + (self.model.vae.latent_w,))  # The median of p(w).
    decoder_0 = models.modality_params(state.vae_params['decoders'], 0)
    decodes = self.model.vae.decoder.apply(decoder_0, jnp.concatenate([w, z], axis=-1))
    tiles = np.clip(np.asarray(decodes), 0, 1).transpose(1, 0, 2, 3, 4)  # (chains, T, ...)
    return self._save(out_dir, 'prior_langevin_trajectory.png', tiles)

  @staticmethod
  def _save(out_dir: str, name: str, tiles: np.ndarray) -> str:
    metric_logging.save_png(os.path.join(out_dir, name), metric_logging.image_grid(tiles))
    return name


def write_report(out_dir: str, metrics: dict[str, Any], figures: dict[str, str]) -> None:
  """metrics.json and a Markdown report with the table in the layout of the paper's Table 1."""
  with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
    json.dump(metrics, f, indent=2, sort_keys=True)
  c = metrics['coherence']
  lines = [f"# Evaluation of {metrics['model']} at step {metrics['step']}", '',
           f"Test examples: {c['num_test_examples']}; joint samples: {c['num_joint_samples']}.",
           '', '| model | joint coherence | cross coherence |', '|---|---|---|']
  for tag in ('q', 'pre_ld', 'post_ld'):
    if tag in c:
      name = metrics['model'] + {'q': '', 'pre_ld': ' pre-LD', 'post_ld': ' post-LD'}[tag]
      joint = f"{c['joint_coherence']:.3f}" if tag != 'pre_ld' else 'n/a'
      lines.append(f"| {name} | {joint} | {c[tag]['cross_coherence']:.3f} |")
  lines += ['', 'Conditional coherence per number of observed modalities (MoPoE protocol):', '']
  tags = [t for t in ('q', 'pre_ld', 'post_ld') if t in c]
  lines += ['| inputs | ' + ' | '.join(tags) + ' |', '|---' * (len(tags) + 1) + '|']
  sizes = list(c[tags[0]]['subset_coherence'])
  for size in sizes:
    lines.append(f'| {size} | ' + ' | '.join(f"{c[t]['subset_coherence'][size]:.3f}"
                                              for t in tags) + ' |')
  captions = {'joint': 'Joint samples (rows: samples; columns: modalities).',
              'pre_post_ld': 'From m0: source, pre-LD decodes, post-LD decodes.',
              'prior_trajectory': 'Prior Langevin chains (rows), modality 0 along the chain.'}
  lines.append('')
  for name, file in figures.items():
    caption = captions.get(name, f'Cross generation from {name.rsplit("_", 1)[-1]} (rows: test '
                                 'examples): the source, then every modality.')
    lines += [f'{caption}', '', f'![{name}]({file})', '']
  with open(os.path.join(out_dir, 'report.md'), 'w') as f:
    f.write('\n'.join(lines))


def evaluate_run(config, workdir: str, classify=None) -> dict[str, Any]:
  """Evaluates the latest checkpoint in `workdir`; writes <workdir>/eval/{metrics.json,
  report.md, *.png}. `classify` (images (N, M, 28, 28, 3) -> digits (N, M)) defaults to the
  coherence classifiers of this dataset, trained on first use."""
  from moe_ebm_jax import checkpointing  # pylint: disable=g-import-not-at-top
  if classify is None:
    from moe_ebm_jax import classifiers  # pylint: disable=g-import-not-at-top
    classify = classifiers.load_or_train(config.data).predict
  model = train_lib.make_model(config)
  steps = train_lib.compile_steps(config, model, train_lib.make_mesh())
  abstract = jax.eval_shape(steps['init'], jax.random.PRNGKey(0))
  ckpt = checkpointing.Checkpointer(workdir, keep_latest=config.keep_checkpoints,
                                    keep_best=config.keep_best_checkpoints)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f'no checkpoint in {workdir}: train first (--mode=train).')
  state, _ = ckpt.restore(abstract)
  ckpt.close()
  step = int(state.step)
  evaluator = Evaluator(config, model, classify)
  limit = config.eval.num_test_examples
  batches, seen = [], 0
  for batch in input_pipeline.eval_dataset(config):
    if limit is not None and seen >= limit:
      break
    if limit is not None and seen + len(batch['label']) > limit:
      batch = {k: v[:limit - seen] for k, v in batch.items()}
    batches.append(batch)
    seen += len(batch['label'])
  key = jax.random.PRNGKey(config.seed + 2)
  start = time.time()
  coherence = evaluator.coherence(state, batches, key, num_joint=config.eval.num_joint_samples)
  out_dir = os.path.join(workdir, 'eval')
  figures = evaluator.figures(state, batches[0]['images'][:config.num_image_samples],
                              jax.random.fold_in(key, 1), out_dir)
  metrics = {'model': config.model.name, 'step': step, 'coherence': coherence,
             'eval_seconds': time.time() - start}
  write_report(out_dir, metrics, figures)
  logging.info('Evaluation of step %d written to %s: joint coherence %.3f, %s', step, out_dir,
               coherence['joint_coherence'],
               {t: round(coherence[t]['cross_coherence'], 3)
                for t in ('q', 'pre_ld', 'post_ld') if t in coherence})
  return metrics
