r"""A new prior on z, a mixture of K Gaussians: the prior interface (priors.py), one registration,
and config.model.prior names it. Its update, in the one jitted training step, maximises E_q[log p(z)].

  python examples/new_prior.py   # ~1 minute on 2 CPU cores, the synthetic mixture"""

import dataclasses
import os
import tempfile

import jax
import jax.numpy as jnp

from moe_ebm_jax import config_lib, distributions, metric_logging, priors, train


@dataclasses.dataclass(frozen=True)
class MixturePrior:
  num_components: int = 4

  def init(self, key, latent_dim):
    means = 2.0 * jax.random.normal(key, (self.num_components, latent_dim))
    return {'means': means, 'log_scales': 0 * means, 'logits': jnp.zeros(self.num_components)}

  def init_state(self, key, latent_dim):  # Carried between steps besides params: nothing.
    return {}

  def log_prob(self, params, beta):  # -> log p: (..., D) -> (...)
    def log_p(z):
      each = distributions.normal_log_prob(z[..., None, :], params['means'],
                                           jnp.exp(params['log_scales']))
      return jax.nn.logsumexp(each + jax.nn.log_softmax(params['logits']), axis=-1)
    return log_p

  def sample(self, params, key, num, latent_dim, keep_trajectory=False, state=None):
    k = jax.random.categorical(jax.random.fold_in(key, 1), params['logits'], shape=(num,))
    return distributions.normal_sample(key, params['means'][k],
                                       jnp.exp(params['log_scales'][k])), {}

  def learn(self, params, state, keys, vae, vae_params, x, aux):  # Fit p(z) to q(z | x_m)'s z.
    z = distributions.normal_sample(keys[0], aux.post.z_loc, aux.post.z_scale)
    loss, grads = jax.value_and_grad(lambda p: -self.log_prob(p, 1.0)(z).mean())(params)
    return grads, state, {'prior_nll': loss}, jnp.isfinite(loss), jnp.array(True)


priors.register('mixture')(lambda model: MixturePrior())


def main(num_steps: int = 200) -> list[float]:
  path = os.path.join(os.path.dirname(__file__), '..', 'configs', 'smoke.py')
  config = config_lib.from_file(path, 'mmvaeplus,synthetic_mixture')
  config.model.prior, config.ebm.learning_rate = 'mixture', 1e-2  # The prior's own optimiser.
  config.num_train_steps, config.eval_every_steps, config.log_every_steps = num_steps, 100, 50
  train.train_and_evaluate(config, workdir := tempfile.mkdtemp())
  nll = [v for _, v in metric_logging.read_scalars(workdir + '/tensorboard')['train/prior_nll']]
  print('prior NLL of posterior samples, every 50 steps:', *(f'{v:.2f}' for v in nll))
  return nll


if __name__ == '__main__':
  main()
