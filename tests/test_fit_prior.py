"""Post-hoc priors on a trained workdir: fitted to its q(z | X), kept beside the checkpoint,
evaluated with; the means of q(z | X) the fit can take instead of samples."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_ebm_jax import config_lib
from moe_ebm_jax import fit_prior
from moe_ebm_jax import train
from moe_ebm_jax import workdir as workdir_lib
from moe_ebm_jax.latent import mixture
from moe_ebm_jax.vae import aggregation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_means_of_the_aggregate_posterior_against_their_formulas():
  rng = np.random.default_rng(0)
  loc = rng.normal(size=(3, 4, 2)).astype(np.float32)
  scale = rng.uniform(0.5, 2.0, size=(3, 4, 2)).astype(np.float32)
  every = np.ones(3, bool)
  np.testing.assert_allclose(aggregation.mean('moe', loc, scale, every), loc.mean(0), rtol=1e-6)
  precision = 1 / (scale ** 2 + 1e-8)
  poe = (precision * loc).sum(0) / (precision.sum(0) + 1 / (1 + 1e-8))  # The prior expert's 0.
  np.testing.assert_allclose(aggregation.mean('poe', loc, scale, every), poe, rtol=1e-5)
  subsets = aggregation.nonempty_subsets(3)
  products = [(precision[s] * loc[s]).sum(0) / precision[s].sum(0) for s in subsets]
  np.testing.assert_allclose(aggregation.mean('mopoe', loc, scale, every),
                             np.mean(products, axis=0), rtol=1e-5)
  only_first = np.array([True, False, False])
  np.testing.assert_allclose(aggregation.mean('mopoe', loc, scale, only_first), loc[0],
                             rtol=1e-5)


def test_the_latents_of_incomplete_tuples_come_from_their_observed_modalities():
  """posthoc.source='means' on half-missing data: each tuple's z is the mean of its observed
  experts' means (MMVAE+'s mixture), by hand."""
  from moe_ebm_jax import input_pipeline, model_state, optimizers  # pylint: disable=g-import-not-at-top
  config = config_lib.from_file(os.path.join(ROOT, 'configs', 'smoke.py'),
                                'mmvaeplus,synthetic_mixture')
  config.data.missing_ratio, config.posthoc.source = 0.5, 'means'
  model = model_state.make_model(config)
  state = model_state.init_state(model, *optimizers.make_optimizers(config),
                                 jax.random.PRNGKey(0))
  z = fit_prior.encode_train(config, model, state, jax.random.PRNGKey(1))
  expected = []
  for batch in input_pipeline.eval_dataset(config, split='train'):
    post = model.vae.encode(state.vae_params, jax.tree.map(jnp.asarray, batch['x']))
    seen = np.stack([batch['observed'][n] for n in model.vae.names])  # (M, B)
    assert not seen.all()
    loc = np.asarray(post.z_loc)
    expected.append((seen[..., None] * loc).sum(0) / seen.sum(0)[:, None])
  np.testing.assert_allclose(z, np.concatenate(expected)[:len(z)], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  config = config_lib.from_file(os.path.join(ROOT, 'configs', 'smoke.py'),
                                'mmvaeplus,synthetic_mixture')
  config.num_train_steps, config.checkpoint_every_steps = 30, 30
  config.data.num_train, config.data.num_test = 512, 256
  config.data.train_subset = None  # Every train tuple is fitted (the smoke config keeps 64).
  config.eval.num_test_examples, config.eval.num_joint_samples = 64, 64
  config.posthoc.prior, config.posthoc.num_components = 'gmm', 4
  # The post-hoc EBM's network is the run's config.ebm (a fixed-prior run's config has one too;
  # its shape-setting keys must match the run's, as for a resume).
  config.ebm.hidden, config.ebm.persistent_chains = (16,), 100
  workdir = str(tmp_path_factory.mktemp('posthoc') / 'run')
  train.train_and_evaluate(config, workdir)
  return config, workdir


@pytest.mark.slow
def test_fit_prior_saves_the_fit_beside_its_checkpoint_and_evaluates_with_it(trained):
  config, workdir = trained
  with pytest.raises(FileNotFoundError, match='run --mode=fit_prior --config.posthoc.prior=gmm'):
    fit_prior.evaluate(config, workdir)  # Nothing fitted yet.
  metrics = fit_prior.fit(config, workdir)
  folder = os.path.join(workdir, 'posthoc', 'gmm', 'step_30')
  meta = json.load(open(os.path.join(folder, 'meta.json')))
  assert meta['step'] == 30 and meta['num_examples'] == 512 and meta['source'] == 'samples'
  # What was saved is the fit of the run's own latents, redone here the same way.
  model, state = workdir_lib.restore_latest(config, workdir)
  key = jax.random.PRNGKey(config.posthoc.seed)
  z = fit_prior.encode_train(config, model, state, jax.random.fold_in(key, 0))
  assert z.shape == (512, model.vae.latent_z)
  again, _ = mixture.fit(z, 4, jax.random.fold_in(key, 1))
  prior, params, prior_state, _ = fit_prior.load(config, workdir, 30, model.vae.latent_z)
  assert prior.num_components == 4 and prior_state == {}
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Evaluated with it: its own folder, its joint samples from the mixture.
  out = os.path.join(workdir, 'eval_posthoc_gmm')
  assert json.load(open(os.path.join(out, 'metrics.json')))['complete']
  assert 'Gaussian mixture' in metrics['prior'] and metrics['posthoc']['prior'] == 'gmm'
  assert 'Joint generation: z ~ a 4-component Gaussian mixture' in open(
      os.path.join(out, 'report.md')).read()
  assert not os.path.exists(os.path.join(workdir, 'eval'))  # The run's own evaluation is apart.
  # The mixture's samples decode as the evaluation's joint samples did: fresh draws have the
  # fitted density's mean.
  draws = np.asarray(prior.sample(params, jax.random.PRNGKey(3), 20_000, 0)[0])
  weights = np.asarray(jax.nn.softmax(params['logits']))
  np.testing.assert_allclose(draws.mean(0), weights @ np.asarray(params['means']), atol=0.05)
  assert float(jnp.mean(prior.log_prob(params, 1.0)(z))) > float(
      jnp.mean(model.prior.log_prob({}, 1.0)(z)))  # It fits q(z | X) better than p(z).


@pytest.mark.slow
def test_a_flow_is_fitted_and_evaluated_the_same_way(trained):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.posthoc.prior, config.posthoc.flow_steps, config.posthoc.flow_hidden = 'flow', 100, (16,)
  metrics = fit_prior.fit(config, workdir)
  assert 'coupling flow' in metrics['prior'] and metrics['posthoc']['fit']['steps'] == 100
  model, _ = workdir_lib.restore_latest(config, workdir)
  prior, params, _, meta = fit_prior.load(config, workdir, 30, model.vae.latent_z)
  assert prior.hidden == (16,) and hash(prior)  # Rebuilt from meta.json, static under jit.
  assert np.isfinite(meta['fit']['held_out_nll'])
  assert json.load(open(os.path.join(workdir, 'eval_posthoc_flow', 'metrics.json')))['complete']


@pytest.mark.slow
def test_a_post_hoc_ebm_keeps_its_chains_and_refines_the_posterior_at_evaluation(trained):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.posthoc.prior, config.posthoc.ebm_steps = 'ebm', 20
  config.ebm.prior_steps, config.ebm.posterior_steps = 5, 3
  metrics = fit_prior.fit(config, workdir)
  folder = os.path.join(workdir, 'posthoc', 'ebm', 'step_30')
  meta = json.load(open(os.path.join(folder, 'meta.json')))
  assert meta['fit']['steps'] == 20 and meta['prior_fields']['hidden'] == [16]
  # Rebuilt from what was saved, not from the config it is loaded with.
  other = config.copy_and_resolve_references()
  other.ebm.hidden, other.ebm.persistent_chains = (200, 200), 0
  model, _ = workdir_lib.restore_latest(config, workdir)
  prior, params, prior_state, _ = fit_prior.load(other, workdir, 30, model.vae.latent_z)
  assert prior.energy.hidden == (16,) and prior.persistent_chains == 100
  saved = np.load(os.path.join(folder, 'params.npz'))
  np.testing.assert_array_equal(prior_state['chains'], saved['state/chains'])
  assert prior_state['chains'].shape == (100, model.vae.latent_z)
  # The fixed-prior run, evaluated with the EBM, gets its posterior refinement too.
  coherence = metrics['coherence']
  assert 'pre_ld' in coherence and 'post_ld' in coherence
  assert '5-step prior Langevin from persistent chains' in metrics['prior']


@pytest.mark.slow
def test_main_says_what_fit_prior_needs_in_one_line(trained, tmp_path):
  _, workdir = trained
  args = [sys.executable, 'main.py', '--config=configs/smoke.py:mmvaeplus,synthetic_mixture',
          '--config.data.num_train=512', '--config.data.num_test=256']
  none = subprocess.run(args + [f'--workdir={workdir}', '--mode=fit_prior'],
                        capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert none.returncode == 1
  assert "--mode=fit_prior needs --config.posthoc.prior=<one of ['ebm', 'flow', 'gmm']>" in none.stderr
  empty = subprocess.run(args + [f'--workdir={tmp_path / "empty"}', '--mode=fit_prior',
                                 '--config.posthoc.prior=gmm'],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert empty.returncode == 1 and 'train first' in empty.stderr
  assert 'Traceback' not in none.stderr + empty.stderr
