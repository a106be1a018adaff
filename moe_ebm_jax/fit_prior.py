"""A post-hoc prior for a trained run: fit it, keep it beside its checkpoint, evaluate with it.

  python main.py --config=C --workdir=W --mode=fit_prior --config.posthoc.prior=gmm
  python main.py --config=C --workdir=W --mode=eval --config.posthoc.prior=gmm   # again

C is the config the workdir was trained with. `fit` encodes the training split with the latest
checkpoint (every modality, the model's own aggregation: z ~ q(z | X), or its mean with
posthoc.source='means'), fits config.posthoc.prior (latent/posthoc.py) to those latents, writes it
to <workdir>/posthoc/<prior>/step_<N>/ (cache.save_tree: params.npz and meta.json) and
evaluates with it into <workdir>/eval_posthoc_<prior>/: joint generation draws the shared z from
it; private latents keep their prior (as MultiVae's samplers); conditional numbers are the
encoders' and do not change.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from moe_ebm_jax import cache
from moe_ebm_jax import evaluation
from moe_ebm_jax import input_pipeline
from moe_ebm_jax import log_setup
from moe_ebm_jax import workdir as workdir_lib
from moe_ebm_jax.latent import posthoc
from moe_ebm_jax.vae import aggregation
from moe_ebm_jax.data import missing


def encode_train(config, model, state, key: jax.Array) -> np.ndarray:
  """The latents a post-hoc prior is fitted to: per train tuple z ~ q(z | X) or its mean
  (config.posthoc.source), the first posthoc.num_train_examples tuples (None: all): (N, Dz).
  Incomplete data: q(z | X) of each tuple's observed modalities."""
  limit = config.posthoc.num_train_examples
  vae = model.vae

  @jax.jit
  def latents(vae_params, x, observed, k):  # observed (M, B) bool.
    post = vae.encode(vae_params, x)
    if config.posthoc.source == 'means':
      return aggregation.mean(model.aggregation, post.z_loc, post.z_scale, observed)
    return aggregation.sample(model.aggregation, post.z_loc, post.z_scale, observed, k,
                              vae.distribution)

  out, seen = [], 0
  for i, batch in enumerate(input_pipeline.eval_dataset(config, split='train')):
    if limit is not None and seen >= limit:
      break
    x = jax.tree.map(jnp.asarray, batch['x'])
    observed = missing.batch_observed(batch, vae.names)
    out.append(np.asarray(latents(state.vae_params, x, observed, jax.random.fold_in(key, i))))
    seen += len(out[-1])
  z = np.concatenate(out)
  return z[:limit] if limit is not None else z


FORMAT = 2  # Of the saved tree: {'params', 'state'} (1: the params alone).


def _folder(workdir: str, name: str, step: int) -> str:
  return os.path.join(workdir, 'posthoc', name, f'step_{step}')


def fit(config, workdir: str) -> dict[str, Any]:
  """--mode=fit_prior: fits config.posthoc.prior to the latest checkpoint, saves it beside that
  step, evaluates with it; returns the evaluation's metrics."""
  log_setup.ensure_visible()
  name = config.posthoc.prior
  if name is None:
    raise ValueError('invalid config: --mode=fit_prior needs posthoc.prior (one of '
                     f'{sorted(posthoc.FITTERS)}).')
  model, state = workdir_lib.restore_latest(config, workdir)
  step = int(state.step)
  key = jax.random.PRNGKey(config.posthoc.seed)
  start = time.time()
  z = encode_train(config, model, state, jax.random.fold_in(key, 0))
  encode_seconds = time.time() - start
  logging.info('Post-hoc %s: fitting to %d latents (%s of q(z | X), step %d) ...', name, len(z),
               config.posthoc.source, step)
  fitter = posthoc.get(name)
  prior, params, prior_state, info = fitter.fit(config, z, jax.random.fold_in(key, 1))
  meta = {'prior': name, 'step': step, 'format': FORMAT, 'source': config.posthoc.source,
          'num_examples': int(len(z)), 'encode_seconds': round(encode_seconds, 2),
          'prior_fields': fitter.fields(config, prior), 'prior_class': type(prior).__name__,
          'settings': config.posthoc.to_dict(), 'fit': info}
  folder = _folder(workdir, name, step)
  if jax.process_index() == 0:
    cache.save_tree(folder, jax.device_get({'params': params, 'state': prior_state}), meta)
  logging.info('Post-hoc %s fitted in %.1f s (%s); saved to %s.', name, info['seconds'],
               ', '.join(f'{k} {v}' for k, v in info.items() if k != 'seconds'), folder)
  return evaluate(config, workdir, model=model, state=state)


def load(config, workdir: str, step: int, latent_dim: int):
  """(prior, params, state, meta) of config.posthoc.prior fitted to checkpoint `step`."""
  name = config.posthoc.prior
  folder = _folder(workdir, name, step)
  fix = f'run --mode=fit_prior --config.posthoc.prior={name} again'
  if not os.path.exists(os.path.join(folder, cache.META_FILENAME)):
    raise FileNotFoundError(f'no {name} prior fitted to step {step} in {workdir}: run '
                            f'--mode=fit_prior --config.posthoc.prior={name} first.')
  with open(os.path.join(folder, cache.META_FILENAME)) as f:
    saved = json.load(f)
  prior = posthoc.get(name).rebuild(config, saved['prior_fields'])
  shapes = lambda key: {'params': prior.init(key, latent_dim),
                        'state': prior.init_state(key, latent_dim)}
  template = jax.eval_shape(shapes, jax.random.PRNGKey(0))
  if saved.get('format', 1) == 1:  # The params alone, from priors without state.
    if jax.tree.leaves(template['state']):
      raise ValueError(f'the {name} prior in {folder} was saved without its state: {fix}.')
    params, meta = cache.load_tree(folder, template['params'], {'prior': name, 'step': step})
    tree = {'params': params, 'state': {}}
  else:
    tree, meta = cache.load_tree(folder, template, {'prior': name, 'step': step})
  tree = jax.tree.map(jnp.asarray, tree)
  return prior, tree['params'], tree.get('state', {}), meta  # An empty state saves no file.


def sampling_seconds(prior, params, state, latent_dim: int, num: int, key: jax.Array,
                     repeats: int = 3) -> float:
  """Seconds to draw `num` z from `prior` (compiled, the compile excluded; mean of `repeats`)."""
  draw = jax.jit(lambda k: prior.sample(params, k, num, latent_dim, state=state)[0])
  jax.block_until_ready(draw(key))
  start = time.perf_counter()
  for i in range(repeats):
    jax.block_until_ready(draw(jax.random.fold_in(key, i + 1)))
  return (time.perf_counter() - start) / repeats


def evaluate(config, workdir: str, *, model=None, state=None) -> dict[str, Any]:
  """Evaluation of the latest checkpoint with its fitted post-hoc prior, into
  <workdir>/eval_posthoc_<prior>/."""
  if model is None or state is None:
    model, state = workdir_lib.restore_latest(config, workdir)
  prior, params, prior_state, meta = load(config, workdir, int(state.step), model.vae.latent_z)
  num, dim = config.eval.num_joint_samples, model.vae.latent_z
  key = jax.random.PRNGKey(config.posthoc.seed)
  timing = {'num': num,
            'seconds': sampling_seconds(prior, params, prior_state, dim, num, key),
            'own_seconds': sampling_seconds(model.prior, state.prior_params, state.prior_state,
                                            dim, num, key)}
  logging.info('Drawing %d z: %.4f s from the %s prior, %.4f s from the run\'s own.', num,
               timing['seconds'], config.posthoc.prior, timing['own_seconds'])
  fitted = dataclasses.replace(model, prior=prior)
  state = state.replace(prior_params=params, prior_state=prior_state)
  notes = {'posthoc': {k: meta[k] for k in ('prior', 'source', 'num_examples', 'fit')},
           'sampling': timing}
  return evaluation.evaluate_state(config, workdir, state, model=fitted,
                                   out_name=f'eval_posthoc_{config.posthoc.prior}', notes=notes)

