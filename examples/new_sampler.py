r"""A new MCMC sampler: one function and one registration, then MOE-EBM's chains run it.

Langevin with a step size decaying geometrically to a tenth (large moves first, a small bias last).

  python examples/new_sampler.py   # ~1 minute on 2 CPU cores, random images, no data needed
"""

import jax
import jax.numpy as jnp
import numpy as np

from moe_ebm_jax import model_state, optimizers, train
from moe_ebm_jax.latent import samplers
from new_objective import smoke_config


@samplers.register('langevin_decaying')
def langevin_decaying(log_prob, init, key, *, num_steps, step_size, noise_scale=1.0,
                      keep_trajectory=False, unroll=1):
  """init: (B, ...) or a pytree of them; log_prob(state) -> (B,). Returns (state, diagnostics)."""
  sizes = step_size * 0.1 ** (jnp.arange(num_steps) / max(num_steps - 1, 1))
  grad_fn = jax.value_and_grad(lambda z: (log_prob(z).sum(), log_prob(z)), has_aux=True)

  def step(z, inputs):
    s, k = inputs
    (_, lp), g = grad_fn(z)
    leaves, treedef = jax.tree.flatten(z)
    noise = [jax.random.normal(kk, x.shape, x.dtype)
             for kk, x in zip(jax.random.split(k, len(leaves)), leaves)]
    eps = jax.tree.unflatten(treedef, noise)
    z = jax.tree.map(lambda z_, g_, e: z_ + 0.5 * s**2 * g_ + noise_scale * s * e, z, g, eps)
    norm = jnp.sqrt(sum(jnp.sum(x.reshape(x.shape[0], -1)**2, 1) for x in jax.tree.leaves(g)))
    out = {'log_prob': lp.mean(), 'grad_norm': norm.mean()}
    return z, dict(out, trajectory=z) if keep_trajectory else out

  return jax.lax.scan(step, init, (sizes, jax.random.split(key, num_steps)), unroll=unroll)


def main():
  # A known target: N((1, -2), diag(0.25, 1)).
  log_prob = lambda z: -0.5 * jnp.sum(((z - jnp.array([1.0, -2.0])) / jnp.array([0.5, 1.0]))**2, -1)
  chain = samplers.Chain(num_steps=500, step_size=0.5, sampler='langevin_decaying')
  z, _ = jax.jit(lambda k: chain(log_prob, jnp.zeros((10_000, 2)), k))(jax.random.PRNGKey(0))
  print('target mean (1, -2), var (0.25, 1): got', np.round(z.mean(0), 3), np.round(z.var(0), 3))
  # MOE-EBM's prior and posterior chains with it: one training step.
  config = smoke_config('moe_ebm')
  config.ebm.sampler = 'langevin_decaying'
  model = model_state.make_model(config)
  vae_tx, prior_tx = optimizers.make_optimizers(config)
  state = model_state.init_state(model, vae_tx, prior_tx, jax.random.PRNGKey(0))
  images = np.random.default_rng(0).random((config.batch_size, 5, 28, 28, 3), np.float32)
  state, metrics = jax.jit(lambda s, x: train.train_step(s, x, model=model, vae_tx=vae_tx,
                                                         prior_tx=prior_tx))(state, images)
  print(f"MOE-EBM step with it: loss {float(metrics['vae_loss']):.1f}, "
        f"EBM loss {float(metrics['ebm_loss']):.3f}")
  return z, metrics


if __name__ == '__main__':
  main()
