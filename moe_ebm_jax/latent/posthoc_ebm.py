"""A post-hoc EBM: the latent EBM prior (priors.EnergyPrior: f_a, p0, its chains) trained
after the VAE, on a frozen model's latents, by the update the jointly learned one gets in the
training step: the gradient E_data[grad f_a] - E_prior[grad f_a], prior samples from its prior
chain (persistent or from p0), data from minibatches of the latents.

What it answers (docs/results.md, issue 47): whether learning the EBM with the VAE matters, or
the same prior family fitted afterwards does as well.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax


def fit(prior, z, key: jax.Array, tx: optax.GradientTransformation, *, steps: int,
        batch_size: int, held_out: float = 0.1) -> tuple[dict, dict, dict]:
  """`steps` updates of prior (an EnergyPrior) on minibatches of z (N, D) drawn with
  replacement; a step whose update is not ok (non-finite, energies out of bounds) is skipped,
  as in training. Returns (params, state, info): info holds the contrastive loss and energies
  at the end (means over the last 10% of steps), the held-out fraction's mean f_a against the
  training latents' (an overfitting check), 'skipped' and 'seconds'."""
  start = time.time()
  z = np.asarray(z, np.float32)
  k_split, k_init, k_state, k_steps = jax.random.split(key, 4)
  order = np.asarray(jax.random.permutation(k_split, len(z)))
  n_out = max(1, int(round(held_out * len(z))))
  train, test = jnp.asarray(z[order[n_out:]]), jnp.asarray(z[order[:n_out]])
  params = prior.init(k_init, z.shape[1])
  state = prior.init_state(k_state, z.shape[1])
  opt_state = tx.init(params)
  batch = min(batch_size, len(train))

  @jax.jit
  def step(params, state, opt_state, k):
    k_batch, k_chain = jax.random.split(k)
    data = train[jax.random.randint(k_batch, (batch,), 0, len(train))]
    update = prior.learn_from_samples(params, state, k_chain, data)
    ok = update.ok_loss & update.ok_bounds
    updates, new_opt = tx.update(update.grads, opt_state, params)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    return (keep(optax.apply_updates(params, updates), params), keep(update.state, state),
            keep(new_opt, opt_state), update.metrics, ok)

  tail, skipped = [], jnp.zeros((), jnp.int32)
  for i in range(steps):
    params, state, opt_state, metrics, ok = step(params, state, opt_state,
                                                 jax.random.fold_in(k_steps, i))
    skipped += jnp.logical_not(ok)
    if i >= steps - max(1, steps // 10):
      tail.append(jax.device_get(metrics))
  f = lambda x: float(prior.energy.apply(params, x).mean())
  info = {key: float(np.mean([m[key] for m in tail])) for key in
          ('ebm_loss', 'energy_prior', 'energy_posterior')}
  info.update(mean_f_train=f(train), mean_f_held_out=f(test), steps=steps, skipped=int(skipped),
              seconds=time.time() - start)
  return params, state, info
