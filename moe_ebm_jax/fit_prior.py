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


def encode_train(config, model, state, key: jax.Array) -> np.ndarray:
  """The latents a post-hoc prior is fitted to: per train tuple z ~ q(z | X) or its mean
  (config.posthoc.source), the first posthoc.num_train_examples tuples (None: all): (N, Dz)."""
  limit = config.posthoc.num_train_examples
  vae = model.vae

  @jax.jit
  def latents(vae_params, x, k):
    post = vae.encode(vae_params, x)
    every = jnp.ones((vae.num_modalities,), bool)
    if config.posthoc.source == 'means':
      return aggregation.mean(model.aggregation, post.z_loc, post.z_scale, every)
    return aggregation.sample(model.aggregation, post.z_loc, post.z_scale, every, k,
                              vae.distribution)

  out, seen = [], 0
  for i, batch in enumerate(input_pipeline.eval_dataset(config, split='train')):
    if limit is not None and seen >= limit:
      break
    x = jax.tree.map(jnp.asarray, batch['x'])
    out.append(np.asarray(latents(state.vae_params, x, jax.random.fold_in(key, i))))
    seen += len(out[-1])
  z = np.concatenate(out)
  return z[:limit] if limit is not None else z


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
  prior, params, info = posthoc.get(name).fit(config.posthoc, z, jax.random.fold_in(key, 1))
  meta = {'prior': name, 'step': step, 'source': config.posthoc.source,
          'num_examples': int(len(z)), 'encode_seconds': round(encode_seconds, 2),
          'prior_fields': dataclasses.asdict(prior), 'prior_class': type(prior).__name__,
          'settings': config.posthoc.to_dict(), 'fit': info}
  folder = _folder(workdir, name, step)
  if jax.process_index() == 0:
    cache.save_tree(folder, jax.device_get(params), meta)
  logging.info('Post-hoc %s fitted in %.1f s (%s); saved to %s.', name, info['seconds'],
               ', '.join(f'{k} {v}' for k, v in info.items() if k != 'seconds'), folder)
  return evaluate(config, workdir, model=model, state=state)


def load(config, workdir: str, step: int, latent_dim: int):
  """(prior, params, meta) of config.posthoc.prior fitted to checkpoint `step`."""
  name = config.posthoc.prior
  folder = _folder(workdir, name, step)
  if not os.path.exists(os.path.join(folder, cache.META_FILENAME)):
    raise FileNotFoundError(f'no {name} prior fitted to step {step} in {workdir}: run '
                            f'--mode=fit_prior --config.posthoc.prior={name} first.')
  with open(os.path.join(folder, cache.META_FILENAME)) as f:
    fields = json.load(f)['prior_fields']
  prior = posthoc.get(name).prior(**fields)
  template = jax.eval_shape(lambda key: prior.init(key, latent_dim), jax.random.PRNGKey(0))
  params, meta = cache.load_tree(folder, template, {'prior': name, 'step': step})
  return prior, jax.tree.map(jnp.asarray, params), meta


def evaluate(config, workdir: str, *, model=None, state=None) -> dict[str, Any]:
  """Evaluation of the latest checkpoint with its fitted post-hoc prior, into
  <workdir>/eval_posthoc_<prior>/."""
  if model is None or state is None:
    model, state = workdir_lib.restore_latest(config, workdir)
  prior, params, meta = load(config, workdir, int(state.step), model.vae.latent_z)
  fitted = dataclasses.replace(model, prior=prior)
  state = state.replace(prior_params=params, prior_state={})
  notes = {'posthoc': {k: meta[k] for k in ('prior', 'source', 'num_examples', 'fit')}}
  return evaluation.evaluate_state(config, workdir, state, model=fitted,
                                   out_name=f'eval_posthoc_{config.posthoc.prior}', notes=notes)

