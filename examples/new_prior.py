r"""A new prior with its own posterior inference: a K-Gaussian mixture on z, learned in the jitted
step (maximising E_q[log p(z)]), whose refine_posterior moves q's z up log p(x_S | z, w_S) +
log p(z) at generation; evaluation then reports pre- and post-refinement numbers, as for the EBM.

  python examples/new_prior.py   # ~2 minutes on 2 CPU cores, the synthetic mixture"""

import dataclasses
import json
import os
import tempfile

import jax
import jax.numpy as jnp

from moe_ebm_jax import config_lib, input_pipeline, metric_logging, model_state, train
from moe_ebm_jax.latent import priors
from moe_ebm_jax.vae import distributions as dists


@dataclasses.dataclass(frozen=True)
class MixturePrior(priors.Prior):  # priors.Prior: no state; refines_posterior set below.
  k: int = 4
  refines_posterior = True

  def init(self, key, latent_dim):
    means = 2.0 * jax.random.normal(key, (self.k, latent_dim))
    return {'means': means, 'log_scales': 0 * means, 'logits': jnp.zeros(self.k)}

  def log_prob(self, params, beta):  # -> log p: (..., D) -> (...)
    return lambda z: jax.nn.logsumexp(jax.nn.log_softmax(params['logits']) + dists.normal_log_prob(
        z[..., None, :], params['means'], jnp.exp(params['log_scales'])), axis=-1)

  def sample(self, params, key, num, latent_dim, keep_trajectory=False, state=None):
    k = jax.random.categorical(jax.random.fold_in(key, 1), params['logits'], shape=(num,))
    return dists.normal_sample(key, params['means'][k], jnp.exp(params['log_scales'][k])), {}

  def learn(self, params, state, keys, vae, vae_params, x, aux):  # Fit p(z) to q(z | x_m)'s z.
    z = dists.normal_sample(keys[0], aux.post.z_loc, aux.post.z_scale)
    loss, grads = jax.value_and_grad(lambda p: -self.log_prob(p, 1.0)(z).mean())(params)
    return priors.PriorUpdate(grads, state, {'prior_nll': loss}, jnp.isfinite(loss), True)

  def log_posterior(self, params, vae, vae_params, x, z, w, observed):  # (B, Dz) -> (B,)
    latents = jnp.concatenate([w, jnp.broadcast_to(z, w.shape[:1] + z.shape)], axis=-1)
    log_px = jnp.where(observed[:, None], vae.log_likelihood(vae_params, latents, x), 0.0)
    return log_px.sum(0) + self.log_prob(params, 1.0)(z)

  def refine_posterior(self, params, vae, vae_params, x, z, w, observed, key, **_):
    grad = jax.grad(lambda z: self.log_posterior(params, vae, vae_params, x, z, w, observed).sum())
    for _ in range(5):  # Five steps of gradient ascent; deterministic, the key is unused.
      z = z + 0.05 * grad(z)
    return z, w, None

  def describe_refinement(self):
    return '5 gradient steps up log p(x_S | z, w_S) + log p(z)'


priors.register('mixture')(lambda config, vae: MixturePrior())


def main(num_steps: int = 200) -> dict:
  config = config_lib.from_file(os.path.join(os.path.dirname(__file__), '..', 'configs',
                                             'smoke.py'), 'mmvaeplus,synthetic_mixture')
  config.model.prior, config.prior_optim.learning_rate = 'mixture', 1e-2  # Its own optimiser.
  config.num_train_steps, config.eval_every_steps, config.log_every_steps = num_steps, 100, 50
  config.eval.at_end_of_training = True  # Coherence pre- and post-refinement, and figures.
  state = train.train_and_evaluate(config, workdir := tempfile.mkdtemp())
  nll = [v for _, v in metric_logging.read_scalars(workdir + '/tensorboard')['train/prior_nll']]
  print('prior NLL of posterior samples, every 50 steps:', *(f'{v:.2f}' for v in nll))
  model, x = model_state.make_model(config), input_pipeline.first_test_batches(config, 64)[0]['x']
  post, first = model.vae.encode(state.vae_params, x), jnp.arange(model.vae.num_modalities) == 0
  args = (state.prior_params, model.vae, state.vae_params, x)  # From the first modality alone.
  z = model.prior.refine_posterior(*args, post.z_loc[0], post.w_loc, first, None)[0]
  before, after = (float(model.prior.log_posterior(*args, v, post.w_loc, first).mean())
                   for v in (post.z_loc[0], z))
  print(f'log p(x_0, z) before and after refinement: {before:.3f} -> {after:.3f}')
  coherence = json.load(open(os.path.join(workdir, 'eval', 'metrics.json')))['coherence']
  print('cross coherence:', *(f"{t} {coherence[t]['cross_coherence']:.3f}" for t in coherence
                              if isinstance(coherence[t], dict)))
  return {'nll': nll, 'before': before, 'after': after}


if __name__ == '__main__':
  main()
