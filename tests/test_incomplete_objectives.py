"""The objectives on incomplete batches (issue 48) against the same model without the missing
modality, computed another way: a batch in which every example misses modality 'b' gives the
loss and gradients of the model with modalities ('a', 'c') alone (its params the full model's
minus b's), with the same random draws. Then: missing entries' values change nothing, a missing
modality's networks get no gradient, the EBM's chains ignore missing modalities, and one
compiled step serves every pattern of missing modalities.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_ebm_jax.latent import ebm as ebm_lib
from moe_ebm_jax.vae import aggregation as agg
from moe_ebm_jax.vae import distributions as dists
from moe_ebm_jax.vae import modalities
from moe_ebm_jax.vae import models
from moe_ebm_jax.vae import networks
from moe_ebm_jax.vae import objectives

B, BETA, K = 6, 1.7, 3
SPECS = (modalities.vector_spec('a', 3), modalities.vector_spec('b', 4),
         modalities.label_spec('c', 5))
KEEP = ('a', 'c')  # 'b' is missing from every example.


def make(objective, specs=SPECS):
  """The tiny model of `objective` over `specs`, and random params (Flax init)."""
  private = objective == 'mmvaeplus'
  family = 'laplace' if objective in ('mmvaeplus', 'mmvae') else 'gaussian'
  vae = models.MultimodalVAE(specs, mlp_hidden=(8,), latent_w=2 if private else 0, latent_z=3,
                             distribution=family, scale_eps=1e-6)
  params = vae.init(jax.random.key(0))
  if private:  # Nonzero auxiliary-prior logits, so their gradient is not trivially equal.
    params['aux_prior_logits'] = jax.random.normal(jax.random.key(1),
                                                   params['aux_prior_logits'].shape)
  return vae, params


def batch(seed=0, specs=SPECS):
  rng = np.random.default_rng(seed)
  x = {}
  for s in specs:
    if s.dtype == 'int32':
      x[s.name] = jnp.asarray(rng.integers(0, s.num_classes, B), jnp.int32)
    else:
      x[s.name] = jnp.asarray(rng.normal(size=(B,) + s.shape), jnp.float32)
  return x


def sub_model(vae, params, keep=KEEP):
  """The model of the kept modalities alone and its params (the full model's, sliced)."""
  rows = [vae.names.index(n) for n in keep]
  sub = models.MultimodalVAE(tuple(vae.modalities[i] for i in rows), mlp_hidden=vae.mlp_hidden,
                             latent_w=vae.latent_w, latent_z=vae.latent_z,
                             distribution=vae.distribution, scale_eps=vae.scale_eps,
                             stack_identical=False)  # Params keyed by name, as the full one's.
  sub_params = {k: {n: params[k][n] for n in keep} for k in ('encoders', 'decoders')}
  if 'aux_prior_logits' in params:
    sub_params['aux_prior_logits'] = params['aux_prior_logits'][jnp.asarray(rows)]
  return sub, sub_params, rows


def only_b_missing():
  return jnp.stack([jnp.full((B,), n != 'b') for n in ('a', 'b', 'c')])


def full_loss(objective, vae, x, key, observed, **kw):
  return lambda p: objectives.get(objective).fn(vae, p, x, key, beta=BETA, observed=observed,
                                                **kw)[0]


def assert_same_loss_and_grads(full, hand, params, sub_params):
  """full(params) == hand(sub_params), their gradients on the kept modalities equal and b's
  networks without gradient."""
  (lf, gf), (lh, gh) = jax.value_and_grad(full)(params), jax.value_and_grad(hand)(sub_params)
  np.testing.assert_allclose(lf, lh, rtol=1e-6)
  for part in ('encoders', 'decoders'):
    for leaf in jax.tree.leaves(gf[part]['b']):
      np.testing.assert_array_equal(leaf, 0.0)
    for n in KEEP:
      jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=2e-5, atol=1e-6),
                   gf[part][n], gh[part][n])
  if 'aux_prior_logits' in params:
    np.testing.assert_array_equal(gf['aux_prior_logits'][1], 0.0)
    np.testing.assert_allclose(gf['aux_prior_logits'][jnp.asarray([0, 2])],
                               gh['aux_prior_logits'], rtol=2e-5, atol=1e-6)


# ------------------------------------------------------------------ MMVAE+ and MMVAE


@pytest.mark.parametrize('estimator', ['elbo', 'iwae', 'dreg'])
def test_mmvaeplus_without_b_is_the_two_modality_model(estimator):
  vae, params = make('mmvaeplus')
  sub, sub_params, rows = sub_model(vae, params)
  x, key = batch(), jax.random.key(2)
  # The objective's draws are loc + scale * eps: eps from a standard posterior, same key.
  m = vae.num_modalities
  unit = models.Posteriors(*(f((m, B, d)) for f, d in (
      (jnp.zeros, vae.latent_w), (jnp.ones, vae.latent_w), (jnp.zeros, vae.latent_z),
      (jnp.ones, vae.latent_z))))
  eps = objectives.sample_latents(key, unit, jnp.ones((m, vae.latent_w)), K)
  idx = jnp.asarray(rows)
  x_sub = {n: x[n] for n in KEEP}

  def hand(p):
    """The two-modality model's bound from the paper's estimators, its own complete code."""
    post = sub.encode(p, x_sub)
    scale = sub.aux_prior_scale(p)

    def lw_fn(stop_posterior, grad_weights=None):
      lat = objectives.Latents(
          post.w_loc[:, None] + post.w_scale[:, None] * eps.w[idx],
          post.z_loc[:, None] + post.z_scale[:, None] * eps.z[idx],
          scale[:, None, None, None] * eps.w_aux[idx][:, idx])  # [d, r]: r_d's scale.
      if grad_weights is not None:
        g = grad_weights[..., None]
        lat = lat._replace(w=objectives.scale_gradient(lat.w, g),
                           z=objectives.scale_gradient(lat.z, g))
      q = jax.tree.map(jax.lax.stop_gradient, post) if stop_posterior else post
      return objectives.mmvaeplus_log_weights(sub, p, x_sub, q, lat,
                                              models.standard_laplace_log_prob, BETA)[0]

    if estimator == 'elbo':
      return -lw_fn(False).mean()
    if estimator == 'iwae':
      return -objectives.logmeanexp(lw_fn(False), axis=1).mean()
    w = jax.nn.softmax(jax.lax.stop_gradient(lw_fn(False)), axis=1)
    return -(w * lw_fn(True, w)).sum(axis=1).mean()

  full = full_loss('mmvaeplus', vae, x, key, only_b_missing(), num_samples=K,
                   estimator=estimator)
  assert_same_loss_and_grads(full, hand, params, sub_params)


def test_mmvae_without_b_is_the_two_modality_model():
  vae, params = make('mmvae')
  sub, sub_params, rows = sub_model(vae, params)
  x, key = batch(), jax.random.key(3)
  m, idx = vae.num_modalities, jnp.asarray(rows)
  unit = models.Posteriors(jnp.zeros((m, B, 0)), jnp.ones((m, B, 0)), jnp.zeros((m, B, 3)),
                           jnp.ones((m, B, 3)))
  eps = objectives.sample_latents(key, unit, jnp.ones((m, 0)), 1)

  def hand(p):  # lw_r = sum_d log p(x_d | z_r) + beta (log p(z_r) - log q_mix(z_r | x_a, x_c))
    post = sub.encode(p, {n: x[n] for n in KEEP})
    z = post.z_loc[:, None] + post.z_scale[:, None] * eps.z[idx]  # (2, 1, B, D)
    log_px = sub.log_likelihood(p, jnp.broadcast_to(z[None], (2,) + z.shape),
                                {n: x[n] for n in KEEP}).sum(axis=0)  # (Mr, 1, B)
    log_q = jnp.stack([dists.laplace_log_prob(z, post.z_loc[j, None], post.z_scale[j, None])
                       for j in range(2)])
    log_q_mix = jax.nn.logsumexp(log_q, axis=0) - jnp.log(2.0)
    lw = log_px + BETA * (dists.laplace_log_prob(z, 0.0, 1.0) - log_q_mix)
    return -lw.mean()

  full = full_loss('mmvae', vae, x, key, only_b_missing(), num_samples=1, estimator='elbo')
  assert_same_loss_and_grads(full, hand, params, sub_params)


# ------------------------------------------------------------------ the PoE family


def test_mvae_without_b_is_the_two_modality_model():
  vae, params = make('mvae')
  sub, sub_params, rows = sub_model(vae, params)
  x, key = batch(), jax.random.key(4)
  k_joint, k_uni = jax.random.split(key)
  eps_joint = jax.random.normal(k_joint, (B, 3))
  eps_uni = jax.random.normal(k_uni, (3, B, 3))[jnp.asarray(rows)]
  x_sub = {n: x[n] for n in KEEP}

  def hand(p):
    """ELBO of PoE(q_a, q_c, N(0, I)) + the ELBOs of a and c (each with the prior expert)."""
    post = sub.encode(p, x_sub)
    prec = 1.0 / (jnp.square(post.z_scale) + 1e-8)
    total = prec.sum(0) + 1.0 / (1.0 + 1e-8)
    loc, scale = (prec * post.z_loc).sum(0) / total, 1.0 / jnp.sqrt(total)
    z = loc + scale * eps_joint
    recon = sub.log_likelihood(p, jnp.broadcast_to(z[None], (2, B, 3)), x_sub).sum(0)
    bound = recon - BETA * dists.kl_normal(loc, scale)
    p_uni = 1.0 / jnp.square(post.z_scale)
    loc_m, scale_m = post.z_loc * p_uni / (p_uni + 1.0), 1.0 / jnp.sqrt(p_uni + 1.0)
    z_m = loc_m + scale_m * eps_uni
    bound += (sub.log_likelihood(p, z_m, x_sub) - BETA * dists.kl_normal(loc_m, scale_m)).sum(0)
    return -bound.mean()

  assert_same_loss_and_grads(full_loss('mvae', vae, x, key, only_b_missing()), hand, params,
                             sub_params)


def test_mmjsd_without_b_is_the_two_modality_model():
  vae, params = make('mmjsd')
  sub, sub_params, rows = sub_model(vae, params)
  x, key = batch(), jax.random.key(5)
  eps = jax.random.normal(key, (3, B, 3))[jnp.asarray(rows)]
  x_sub = {n: x[n] for n in KEEP}

  def hand(p):
    """Mean over sources a, c of log p(x_a, x_c | z_src) - beta JS(q_a, q_c, N(0, I))."""
    post = sub.encode(p, x_sub)
    z = post.z_loc + post.z_scale * eps  # (2, B, D)
    recon = sub.log_likelihood(p, jnp.broadcast_to(z[None], (2,) + z.shape), x_sub)
    recon = recon.sum(0).mean(0)
    experts = [(post.z_loc[j], post.z_scale[j]) for j in range(2)]
    experts.append((jnp.zeros_like(post.z_loc[0]), jnp.ones_like(post.z_scale[0])))
    prec = [1.0 / (jnp.square(s) + 1e-8) for _, s in experts[:2]] + [1.0 / (1.0 + 1e-8)]
    total = sum(prec)
    loc_f = sum(pr * l for pr, (l, _) in zip(prec, experts)) / total
    scale_f = 1.0 / jnp.sqrt(total)
    js = sum(dists.kl_normal(l, s, loc_f, scale_f) for l, s in experts) / 3
    return -(recon - BETA * js).mean()

  assert_same_loss_and_grads(full_loss('mmjsd', vae, x, key, only_b_missing()), hand, params,
                             sub_params)


def test_mopoe_without_b_is_the_two_modality_model():
  """Three modalities, b missing: the subsets {a}, {c}, {a, c}; with two (a, b) the one left is
  {a}, so the draw is the one-modality model's, run by the objective's complete code."""
  vae, params = make('mopoe')
  x, key = batch(), jax.random.key(6)
  # Two modalities: the only subset without b is {a}; the draws coincide with the one-modality
  # model's (same key, same shapes).
  vae2, params2 = make('mopoe', SPECS[:2])
  sub1, sub1_params, _ = sub_model(vae2, params2, keep=('a',))
  observed2 = jnp.stack([jnp.ones((B,), bool), jnp.zeros((B,), bool)])
  x2 = {n: x[n] for n in ('a', 'b')}
  full2 = full_loss('mopoe', vae2, x2, key, observed2)
  one = lambda p: objectives.mopoe_objective(sub1, p, {'a': x['a']}, key, beta=BETA)[0]
  (lf, gf), (lo, go) = jax.value_and_grad(full2)(params2), jax.value_and_grad(one)(sub1_params)
  np.testing.assert_allclose(lf, lo, rtol=1e-6)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=2e-5, atol=1e-6),
               {k: gf[k]['a'] for k in gf}, {k: go[k]['a'] for k in go})
  assert all(float(jnp.abs(leaf).max()) == 0.0
             for k in gf for leaf in jax.tree.leaves(gf[k]['b']))
  # Three modalities: the KL term is the mean over the 3 subsets within {a, c}, by hand.
  sub, sub_params, _ = sub_model(vae, params)
  post = sub.encode(sub_params, {n: x[n] for n in KEEP})
  kls = [dists.kl_normal(*agg.product_of_experts(post.z_loc, post.z_scale, jnp.asarray(s)))
         for s in ([1, 0], [0, 1], [1, 1])]
  aux = objectives.mopoe_objective(vae, params, x, key, beta=BETA, observed=only_b_missing())[1]
  np.testing.assert_allclose(aux.metrics['kl'], jnp.mean(jnp.stack(kls)), rtol=1e-5)


# ------------------------------------------------------------------ every objective


def mixed_observed(seed=0):
  """Random masks with at least one modality per example, a always kept."""
  rng = np.random.default_rng(seed)
  obs = rng.random((3, B)) < 0.5
  obs[0] = True
  return jnp.asarray(obs)


@pytest.mark.parametrize('objective', ['mmvaeplus', 'mmvae', 'mvae', 'mmjsd', 'mopoe'])
def test_missing_entries_values_change_nothing(objective):
  """Loss and every gradient are the same whatever the missing entries hold."""
  vae, params = make(objective)
  observed, key = mixed_observed(), jax.random.key(7)
  x, other = batch(0), batch(1)
  # Replace only the missing entries (b, c) by other values.
  changed = {n: jnp.where(observed[i].reshape((B,) + (1,) * (x[n].ndim - 1)), x[n], other[n])
             for i, n in enumerate(vae.names)}
  assert any(not np.array_equal(changed[n], x[n]) for n in vae.names)
  kw = dict(num_samples=K, estimator='iwae') if objective.startswith('mmvae') else {}
  grads = [jax.value_and_grad(full_loss(objective, vae, data, key, observed, **kw))(params)
           for data in (x, changed)]
  jax.tree.map(np.testing.assert_array_equal, grads[0], grads[1])


@pytest.mark.parametrize('objective', ['mmvaeplus', 'mvae', 'mmjsd'])
def test_every_modality_observed_gives_the_complete_code_path(objective):
  """An all-True mask is the complete objective up to float rounding (None: the same code).
  (MoPoE's masked subset draw is another random stream; its KL term is compared above.)"""
  vae, params = make(objective)
  x, key = batch(), jax.random.key(8)
  kw = dict(num_samples=K, estimator='dreg') if objective == 'mmvaeplus' else {}
  fn = objectives.get(objective).fn
  masked = fn(vae, params, x, key, beta=BETA, observed=jnp.ones((3, B), bool), **kw)[0]
  complete = fn(vae, params, x, key, beta=BETA, **kw)[0]
  np.testing.assert_allclose(masked, complete, rtol=1e-6)


def test_one_compiled_step_serves_every_pattern():
  """Changing which modalities are missing changes values, not the program (no retrace)."""
  vae, params = make('mmvaeplus')
  traces = []

  @jax.jit
  def loss(p, x, observed):
    traces.append(1)
    return objectives.mmvaeplus_objective(vae, p, x, jax.random.key(0), beta=BETA,
                                          num_samples=1, estimator='elbo',
                                          observed=observed)[0]

  values = {float(loss(params, batch(), mixed_observed(s))) for s in range(4)}
  assert len(traces) == 1 and len(values) > 1


# ------------------------------------------------------------------ the EBM's chains


def test_the_posterior_chain_ignores_missing_modalities():
  """The posterior chain's log density, its gradient and the chain it runs are the same
  whatever a missing modality holds; an observed one's values do change them."""
  vae, params = make('mmvaeplus')
  energy = networks.EnergyMLP(hidden=(8,))
  ebm_params = energy.init(jax.random.key(3), jnp.zeros((1, 3)))
  observed = mixed_observed(1)
  x, other = batch(0), batch(1)
  changed = {n: jnp.where(observed[i].reshape((B,) + (1,) * (x[n].ndim - 1)), x[n], other[n])
             for i, n in enumerate(vae.names)}
  z0 = jax.random.normal(jax.random.key(4), (B, 3))
  w = jax.random.normal(jax.random.key(5), (3, B, 2))
  run = functools.partial(ebm_lib.sample_posterior, vae, params, energy, ebm_params,
                          z0=z0, w=w, key=jax.random.key(6), num_steps=5, step_size=0.05,
                          observed=observed)
  np.testing.assert_array_equal(run(x)[0]['z'], run(changed)[0]['z'])
  # An observed modality moves the chain: its likelihood is in.
  moved = dict(x, a=other['a'])
  assert not np.allclose(run(x)[0]['z'], run(moved)[0]['z'])
  # Per example: the chain's density is the sum over that example's observed modalities.
  log_prob = ebm_lib.posterior_log_prob(vae, params, energy, ebm_params, x, observed, w)
  zw = jnp.concatenate([w, jnp.broadcast_to(z0[None], (3, B, 3))], -1)
  per_modality = vae.log_likelihood(params, zw, x)  # (M, B)
  expected = ((per_modality * observed).sum(0) + energy.apply(ebm_params, z0)
              + models.standard_laplace_log_prob(z0))
  np.testing.assert_allclose(log_prob({'z': z0}), expected, rtol=1e-5)


def test_the_prior_learns_from_each_examples_observed_experts():
  """Posterior samples from q: each example's observed experts share its weight (a loop over
  examples in numpy); posterior chains start from an observed expert, uniformly."""
  energy = networks.EnergyMLP(hidden=(8,))
  params = energy.init(jax.random.key(0), jnp.zeros((1, 3)))
  observed = mixed_observed(2)
  z_post = jax.random.normal(jax.random.key(1), (3, B, 3))
  z_prior = jax.random.normal(jax.random.key(2), (B, 3))
  loss, metrics = ebm_lib.ebm_loss(energy, params, z_prior, z_post,
                                   posterior_weights=agg.observed_weights(observed))
  f = np.asarray(energy.apply(params, z_post))  # (M, B)
  obs = np.asarray(observed)
  per_example = [f[obs[:, b], b].mean() for b in range(B)]
  expected = np.asarray(energy.apply(params, z_prior)).mean() - np.mean(per_example)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(-metrics['energy_posterior'], np.mean(per_example), rtol=1e-5)
  # The chains' starts: an observed expert each time, every observed one about equally often.
  n = 20000
  many = jnp.asarray(np.random.default_rng(3).random((3, n)) < 0.5).at[0].set(False)
  many = many.at[1].set(many[1] | ~many[2])  # At least one of experts 1, 2 per example.
  samples = jnp.broadcast_to(jnp.arange(3.0)[:, None, None], (3, n, 1))
  picked = np.asarray(ebm_lib.pick_observed_expert(jax.random.key(4), samples, many))[:, 0]
  picked = picked.astype(int)
  assert np.asarray(many)[picked, np.arange(n)].all()
  both = np.asarray(many[1] & many[2])
  share = (picked[both] == 1).mean()
  assert abs(share - 0.5) < 4 * np.sqrt(0.25 / both.sum())


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
@pytest.mark.parametrize('model', ['moe_ebm'])  # The EBM's chains too; the rest: above.
def test_training_and_evaluation_on_incomplete_train_and_test_data(tmp_path, model):
  """main.py trains on half-missing data and scores coherence from what the test set has."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = tmp_path / model
  proc = subprocess.run(
      [sys.executable, os.path.join(root, 'main.py'),
       f'--config=configs/synthetic_mixture.py:{model}', f'--workdir={workdir}',
       '--config.num_train_steps=30', '--config.log_every_steps=10',
       '--config.eval_every_steps=30', '--config.checkpoint_every_steps=30',
       '--config.data.num_train=512', '--config.data.num_test=256',
       '--config.ebm.persistent_chains=256', '--config.eval.num_joint_samples=256',
       '--config.data.missing_ratio=0.5', '--config.data.missing_in_test=True'],
      capture_output=True, text=True, cwd=root, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((workdir / 'eval' / 'metrics.json').read_text())
  assert metrics['complete']
  coherence = metrics['coherence']
  per_source = coherence['num_examples_per_source']
  # m0 is always kept; the others are each missing from about half the test examples.
  assert per_source['v0'] == coherence['num_test_examples'] == 256
  for name in ('v1', 'v2'):
    assert abs(per_source[name] - 128) < 4 * 8, per_source
  tag = 'post_ld' if model == 'moe_ebm' else 'q'
  assert 0 <= coherence[tag]['cross_coherence'] <= 1
