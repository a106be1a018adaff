r"""A new objective: one function and one decorator, then trained with the functional API.

MVAE with the joint ELBO only (no unimodal ELBOs, Wu & Goodman's sub-sampling ablated).

  python examples/new_objective.py   # ~1 minute on 2 CPU cores, random images, no data needed
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np

from moe_ebm_jax import model_state, optimizers, train
from moe_ebm_jax.vae import aggregation, distributions, objectives


@objectives.register('mvae_joint_only', aggregation='poe', distribution='gaussian',
                     private_latents=False)
def mvae_joint_only(vae, params, x, key, *, beta, **unused):
  """x: the batch's modalities {name: (B, *shape)} -> (-mean joint ELBO, VaeAux)."""
  post = vae.encode(params, x)  # (M, B, Dz) locs and scales
  m = vae.num_modalities
  loc, scale = aggregation.product_of_experts(post.z_loc, post.z_scale, jnp.ones((m,), bool),
                                              prior_expert=True)
  z = jnp.broadcast_to(distributions.normal_sample(key, loc, scale), (m, *loc.shape))  # (M, B, Dz)
  recon = vae.weighted_log_likelihood(params, z, x).sum(0)  # Weighted log p(x_m | z): (B,)
  kl = distributions.kl_normal(loc, scale)
  loss = -(recon - beta * kl).mean()
  metrics = {'vae_loss': loss, 'bound': -loss, 'recon': recon.mean(), 'kl': kl.mean()}
  return loss, objectives.VaeAux(jax.lax.stop_gradient(post), None, metrics)


def smoke_config(model: str):
  path = os.path.join(os.path.dirname(__file__), '..', 'configs', 'smoke.py')
  spec = importlib.util.spec_from_file_location('smoke', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(model)


def main(num_steps: int = 5) -> list[float]:
  config = smoke_config('mvae_joint_only')  # The objective's name is a model name now.
  model = model_state.make_model(config)
  txs = optimizers.make_optimizers(config)  # The VAE's and the prior's.
  state = model_state.init_state(model, *txs, jax.random.PRNGKey(0))
  step = jax.jit(lambda s, x: train.train_step(s, x, model=model, vae_tx=txs[0], prior_tx=txs[1]))
  rng = np.random.default_rng(0)
  images = {f'm{i}': rng.random((config.batch_size, 28, 28, 3), np.float32) for i in range(5)}
  losses = []
  for i in range(num_steps):
    state, metrics = step(state, images)
    losses.append(float(metrics['vae_loss']))
    print(f'step {i + 1}: loss {losses[-1]:.1f}')
  return losses


if __name__ == '__main__':
  main()
