r"""A trained model's 2-D shared latent drawn: where the data's posteriors lie, where its prior
puts its samples, and (EBM models) the learned energy.

  python experiments/latent_plane.py --config=configs/synthetic_mixture.py:moe_ebm,z2 \
      --workdir=/tmp/table_mixture/moe_ebm_s0 --out=/tmp/plane_moe_ebm.png

Panels: (1) the aggregate posterior: the means of q(z | x_m) of test examples from every
modality, coloured by the true class; (2) samples of the fixed prior (Laplace or Gaussian(0, I));
for EBM models (3) samples of p0 (the chain's start) and (4) of the EBM prior after its prior
chain. Samples are coloured by the class their decodes are classified as when every scored
modality agrees, grey when they disagree (what joint coherence counts). (5) EBM models: the
unnormalised log density f_a(z) + log p0(z) of the prior over the plane, with the posterior means.
With --posthoc=gmm,flow,ebm, one more panel per post-hoc prior fitted to the run
(--mode=fit_prior): its samples, coloured the same way. Prior panels show the aggregate
posterior in light grey beneath. The .json beside the figure adds whether the prior chain
samples the density exp(f_a) p0 / Z (total variation against it, next to that of as many exact
draws).

  python experiments/latent_plane.py --config=configs/synthetic_mixture.py:mmvaeplus,z2 \
      --workdir=W --posthoc=gmm,flow,ebm --out=/tmp/plane_posthoc.png
"""

import json
import os
import textwrap

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags
from moe_ebm_jax import fit_prior
from moe_ebm_jax import generation
from moe_ebm_jax import input_pipeline
from moe_ebm_jax import log_setup
from moe_ebm_jax import workdir as workdir_lib
from moe_ebm_jax.data import coherence_scorers
from moe_ebm_jax.data import datasets
from moe_ebm_jax.evaluators import latent_probe
from moe_ebm_jax.latent import ebm
from moe_ebm_jax.latent import priors
from moe_ebm_jax.vae import distributions as dists

_CONFIG = config_flags.DEFINE_config_file('config', None, 'The run\'s config.', lock_config=False)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The trained run.', required=True)
_OUT = flags.DEFINE_string('out', None, 'The figure (.png); a .json of its numbers beside it.',
                           required=True)
_NUM = flags.DEFINE_integer('num_samples', 2000, 'Samples per prior panel.')
_POSTHOC = flags.DEFINE_list('posthoc', [], 'Post-hoc priors fitted to the run\'s last step '
                             '(--mode=fit_prior), a panel each.')


def agreed_class(predictions: np.ndarray) -> np.ndarray:
  """(N, M) predictions (-1: unscored) -> (N,) the class all scored modalities agree on, else -1."""
  scored = predictions[:, (predictions >= 0).any(0)]
  return np.where((scored == scored[:, :1]).all(1), scored[:, 0], -1)


def main(argv):
  del argv
  log_setup.setup(debug=False)
  config = _CONFIG.value
  model, state = workdir_lib.restore_latest(config, _WORKDIR.value)
  if model.vae.latent_z != 2:
    raise SystemExit(f'the shared latent has {model.vae.latent_z} dimensions; this draws 2.')
  num_classes = datasets.get(config.data).num_classes
  scorer = coherence_scorers.make_scorer(config)
  vae = model.vae
  key = jax.random.PRNGKey(0)

  means, labels = [], []
  for batch in input_pipeline.eval_dataset(config, 'test'):
    means.append(np.asarray(latent_probe.unimodal_means(model, state.vae_params,
                                                        jax.tree.map(jnp.asarray, batch['x']))))
    labels.append(np.asarray(batch['label']))
  means, labels = np.concatenate(means, 1), np.concatenate(labels)  # (M, N, 2), (N,)

  def decode_classes(z, k):
    w = vae.sample_prior(k, (vae.num_modalities, len(z), vae.latent_w))
    decodes = generation.decode_shared(model, state.vae_params, w, z)
    return agreed_class(np.asarray(scorer.classify(decodes)))

  k_fixed, k_p0, k_ebm, k_dec = jax.random.split(key, 4)
  panels = [('aggregate posterior (test means, every modality)',
             means.reshape(-1, 2), np.tile(labels, vae.num_modalities))]
  fixed = dists.standard_sample(vae.distribution, k_fixed, (_NUM.value, 2))
  panels.append((f'fixed prior {vae.distribution}(0, I)', np.asarray(fixed),
                 decode_classes(fixed, k_dec)))
  if isinstance(model.prior, priors.EnergyPrior):
    base = model.prior.p0
    p0 = base.sample(k_p0, (_NUM.value, 2))
    scale = '' if base.scale == 1 else f'{base.scale:g}^2 '
    panels.append((f'p0 = {base.family}(0, {scale}I): the chains\' start', np.asarray(p0),
                   decode_classes(p0, k_dec)))
    z, _ = model.prior.sample(state.prior_params, k_ebm, _NUM.value, 2,
                              state=state.prior_state)
    start = ' from persistent chains' if model.prior.persistent_chains else ''
    panels.append((f'EBM prior after {model.prior.prior_chain.num_steps} chain steps{start}', np.asarray(z),
                   decode_classes(z, k_dec)))
    chain_vs_density = ebm.chain_against_density(
        lambda z: model.prior.energy.apply(state.prior_params, z), base, np.asarray(z),
        k_ebm)

  posthoc_chains = {}
  for i, name in enumerate(_POSTHOC.value):
    fitted = config.copy_and_resolve_references()
    fitted.posthoc.prior = name
    prior, params, prior_state, _ = fit_prior.load(fitted, _WORKDIR.value, int(state.step), 2)
    z, _ = prior.sample(params, jax.random.fold_in(key, 100 + i), _NUM.value, 2,
                        state=prior_state)
    if isinstance(prior, priors.EnergyPrior):  # Does its chain sample its own density?
      posthoc_chains[name] = ebm.chain_against_density(
          lambda v, prior=prior, params=params: prior.energy.apply(params, v), prior.p0,
          np.asarray(z), jax.random.fold_in(key, 200 + i))
    text = prior.describe().removeprefix('z ~ ')
    panels.append((textwrap.fill(f'post-hoc {name}: {text}', 52), np.asarray(z),
                   decode_classes(z, k_dec)))

  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  extra = int(isinstance(model.prior, priors.EnergyPrior))
  fig, axes = plt.subplots(1, len(panels) + extra, figsize=(4 * (len(panels) + extra), 4.2))
  lim = float(np.percentile(np.abs(np.concatenate([p[1] for p in panels])), 99.5)) * 1.05
  cmap = plt.get_cmap('tab10')
  numbers = {}
  for ax, (title, z, cls) in zip(axes, panels):
    if not title.startswith('aggregate'):  # Where the prior should put its mass, beneath.
      ax.scatter(*means.reshape(-1, 2).T, s=2, c=[(0.88, 0.88, 0.88)], linewidths=0)
    colours = np.where(cls[:, None] >= 0, cmap(np.maximum(cls, 0) % 10), (0.6, 0.6, 0.6, 1.0))
    ax.scatter(z[:, 0], z[:, 1], s=3, c=colours, alpha=0.6, linewidths=0)
    agree = float(np.mean(cls >= 0))
    if not title.startswith('aggregate'):
      numbers[title.replace('\n', ' ')] = {'agree': agree, 'class_share': np.bincount(
          cls[cls >= 0], minlength=num_classes).tolist()}
      title += f'\nclasses agree: {agree:.2f}'
    ax.set(title=title, xlim=(-lim, lim), ylim=(-lim, lim), xlabel='z1', ylabel='z2')
    ax.title.set_fontsize(9)
  if isinstance(model.prior, priors.EnergyPrior):
    grid = np.linspace(-lim, lim, 200)
    zz = jnp.asarray(np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2), jnp.float32)
    log_density = model.prior.log_prob(state.prior_params, 1.0)(zz)
    ax = axes[-1]
    image = ax.imshow(np.asarray(log_density).reshape(200, 200), origin='lower',
                      extent=(-lim, lim, -lim, lim), cmap='viridis')
    ax.scatter(means[..., 0].ravel(), means[..., 1].ravel(), s=1, c='w', alpha=0.3)
    ax.set(title='EBM prior: f_a(z) + log p0(z) (unnormalised)\nwhite: posterior means',
           xlabel='z1', ylabel='z2')
    ax.title.set_fontsize(9)
    fig.colorbar(image, ax=ax, fraction=0.046)
  fig.suptitle(f'{config.model.name}, step {int(state.step)}: the shared latent z', fontsize=11)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  fig.savefig(_OUT.value, dpi=110)
  if isinstance(model.prior, priors.EnergyPrior):
    numbers['prior chain against exp(f_a) p0 / Z'] = chain_vs_density
  for name, against in posthoc_chains.items():
    numbers[f'post-hoc {name}: its chain against its exp(f_a) p0 / Z'] = against
  with open(os.path.splitext(_OUT.value)[0] + '.json', 'w') as f:
    json.dump(numbers, f, indent=1)
  print(numbers)


if __name__ == '__main__':
  app.run(main)
