r"""The test bound of trained runs with a normalised prior, comparable across fixed and EBM priors.

Training and the test loss use f_a(z) + log p0(z) for the EBM prior, without log Z (no gradient
needs it), and the KL weight beta: neither is a bound on log p(X) that can be compared with a
fixed prior's. Here every run gets the same estimator at beta = 1 with log p(z) normalised:
f_a(z) + log p0(z) - log Z, log Z from a grid integral over the plane (a 2-D shared latent)
checked against a Monte Carlo estimate from p0. Private latents keep their fixed prior in every
model, so the bounds differ only by the prior of z and by what training made of the encoders
and decoders.

  python experiments/true_bound.py --config=configs/synthetic_mixture.py:moe_ebm,z2 \
      --workdir=/tmp/table_mixture/moe_ebm_s0 --json_out=/tmp/bounds.jsonl

Appends one JSON line per run: log Z (grid, Monte Carlo), the ELBO and the IWAE bound (K
samples per source) of the model's own objective at beta = 1, and log p(X) by importance
sampling with an estimator written apart from the objectives (log_px; marginal_likelihood.py,
1,000 draws), per test example (nats, mean over the test set); for EBM models also each of them
with p0 alone as the prior (elbo_p0, iwae_p0, log_px_p0): what f_a adds; with --posthoc, each
with a post-hoc prior fitted to the run (--mode=fit_prior; normalised densities): suffix _<prior>.
"""

import dataclasses
import json
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
from moe_ebm_jax import fit_prior
from moe_ebm_jax import input_pipeline
from moe_ebm_jax import log_setup
from moe_ebm_jax import workdir as workdir_lib
from moe_ebm_jax.evaluators import marginal_likelihood
from moe_ebm_jax.latent import ebm
from moe_ebm_jax.latent import priors
from moe_ebm_jax.vae import objectives

_CONFIG = config_flags.DEFINE_config_file('config', None, 'The run\'s config.', lock_config=False)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The trained run.', required=True)
_JSON = flags.DEFINE_string('json_out', None, 'A .jsonl file: one line per run appended.',
                            required=True)
_K = flags.DEFINE_integer('num_samples', 64, 'Samples per source for the bounds.')
_POSTHOC = flags.DEFINE_list('posthoc', [], 'Post-hoc priors fitted to the run\'s last step '
                             '(--mode=fit_prior) whose bounds are computed too.')
_K_IS = flags.DEFINE_integer('importance_samples', 1000,
                             'Proposal draws for log p(X) (marginal_likelihood.py).')


def normalised_log_prior(prior, prior_params, latent_dim: int):
  """(z (..., D) -> log p(z) normalised, log Z by grid or None, log Z by Monte Carlo or None):
  an EBM's f_a + log p0 less its log Z; other priors' densities are normalised already."""
  if not isinstance(prior, priors.EnergyPrior):
    return prior.log_prob(prior_params, 1.0), None, None
  energy, base = prior.energy, prior.p0
  f = lambda z: energy.apply(prior_params, z)
  log_z = float(ebm.log_partition_grid(f, base, latent_dim)) if latent_dim <= 2 else None
  log_z_mc = float(ebm.log_partition_monte_carlo(f, base, latent_dim, jax.random.PRNGKey(1)))
  shift = log_z if log_z is not None else log_z_mc
  return (lambda z: f(z) + ebm.base_log_prob(base, z) - shift), log_z, log_z_mc


def main(argv):
  del argv
  log_setup.setup(debug=False)
  config = _CONFIG.value
  model, state = workdir_lib.restore_latest(config, _WORKDIR.value)
  log_prior, log_z, log_z_mc = normalised_log_prior(model.prior, state.prior_params,
                                                    model.vae.latent_z)
  fn = objectives.get(model.objective).fn
  # Bounds of log p(X) need the model's own likelihood: a run trained with likelihood_weights is
  # scored unweighted, as marginal_likelihood.py scores it.
  vae = dataclasses.replace(model.vae, likelihood_weights=())

  log_priors, log_zs = {'': log_prior}, {}
  if isinstance(model.prior, priors.EnergyPrior):  # p0 alone: what f_a adds to the bound.
    log_priors['_p0'] = model.prior.p0.log_prob
  for name in _POSTHOC.value:  # Fitted to q(z | X) after training: what a learned prior adds.
    fitted = config.copy_and_resolve_references()
    fitted.posthoc.prior = name
    prior, params, _, _ = fit_prior.load(fitted, _WORKDIR.value, int(state.step),
                                         model.vae.latent_z)
    log_priors[f'_{name}'], *zs = normalised_log_prior(prior, params, model.vae.latent_z)
    if isinstance(prior, priors.EnergyPrior):
      log_zs.update({f'log_z_grid_{name}': zs[0], f'log_z_monte_carlo_{name}': zs[1]})

  @jax.jit
  def bounds(x, key):  # Per-example bound sums of one batch: ELBO and IWAE at beta = 1.
    out = {}
    for suffix, prior in log_priors.items():
      for estimator in ('elbo', 'iwae'):
        loss, aux = fn(vae, state.vae_params, x, key, beta=1.0, num_samples=_K.value,
                       estimator=estimator, log_prior_z=prior)
        out[estimator + suffix] = -loss * aux.post.z_loc.shape[1]
      # log p(X) by importance sampling, written apart from the objectives.
      out['log_px' + suffix] = marginal_likelihood.log_marginal_likelihood(
          vae, state.vae_params, x, key, prior, num_samples=_K_IS.value).sum()
    return out

  totals, count, key = {}, 0, jax.random.PRNGKey(0)
  for i, batch in enumerate(input_pipeline.eval_dataset(config, 'test')):
    x = jax.tree.map(jnp.asarray, batch['x'])
    for name, value in bounds(x, jax.random.fold_in(key, i)).items():
      totals[name] = totals.get(name, 0.0) + float(value)
    count += len(batch['label'])
  row = {'workdir': os.path.abspath(_WORKDIR.value), 'model': config.model.name,
         'seed': config.seed, 'step': int(state.step), 'num_test': count,
         'num_samples': _K.value, 'log_z_grid': log_z, 'log_z_monte_carlo': log_z_mc, **log_zs,
         **{name: total / count for name, total in totals.items()}}
  print(json.dumps(row))
  with open(_JSON.value, 'a') as f:
    f.write(json.dumps(row) + '\n')


if __name__ == '__main__':
  app.run(main)
