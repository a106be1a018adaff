"""VAE objectives as pure functions, and the registry that names them.

Every objective has the signature

  objective(vae, params, x, key, *, beta, num_samples, estimator, log_prior_z[, observed])
      -> (loss to minimise, VaeAux)

with x the batch's modalities {name: (B, *shape)} (models.py), and is registered with `register(name, aggregation=...,
distribution=..., private_latents=..., estimators=...)`: the model family of the paper's
tables is an objective plus how its unimodal posteriors combine for conditional generation
(aggregation.py). A new objective is one function and one decorator.

Registered: 'mmvaeplus' (Palumbo et al. 2023), 'mmvae' (Shi et al. 2019: the same log-weights
with one shared latent), 'mvae' (Wu & Goodman 2018), 'mmjsd' (Sutter et al. 2020), 'mopoe'
(Sutter et al. 2021).

Incomplete data (data/missing.py): objectives registered with supports_incomplete=True take
`observed`, bool (M, B) (row m: which examples have modality m; at least one per example), and
drop what is missing per example, as MultiVae's masked losses do: a missing modality's posterior
leaves the mixture or product (its weight renormalised over the observed ones), its
reconstruction term is dropped, subsets are drawn among the observed modalities. A missing
modality's encoder and decoder get no gradient from that example. observed=None (complete
batches, which carry no mask) runs the complete-data code unchanged.

The MMVAE(+) objectives are importance-weighted estimators

An objective maps (params, x, key) to (loss, aux). The estimators here are generic over a
`log_weights_fn` that returns log-weights of shape (S, K, B): S strata (the source modality of
a mixture-of-experts posterior), K importance samples, B examples.

  elbo:  -mean_{S,B} mean_K lw             (K = 1 gives the usual ELBO)
  iwae:  -mean_{S,B} logmeanexp_K lw       (Burda et al. 2016)
  dreg:  a surrogate whose gradient is the doubly-reparameterised IWAE gradient
         (Tucker et al. 2019): decoder gradients weighted by w~, encoder gradients through the
         samples by w~^2, with the posterior's parameters stopped in log q.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from moe_ebm_jax import registry
from moe_ebm_jax.vae import aggregation as agg
from moe_ebm_jax.vae import distributions as dists
from moe_ebm_jax.vae import models

ESTIMATORS = ('elbo', 'iwae', 'dreg')

# log_weights_fn(grad_weights, stop_posterior) -> (lw (S, K, B), aux). grad_weights (S, K, B) or
# None multiplies the gradient flowing back through the reparameterised samples.
LogWeightsFn = Callable[[jax.Array | None, bool], tuple[jax.Array, Any]]


def scale_gradient(x: jax.Array, weight: jax.Array) -> jax.Array:
  """Identity in the forward pass; multiplies the incoming gradient by `weight` (broadcast)."""
  return jax.lax.stop_gradient(x) + weight * (x - jax.lax.stop_gradient(x))


def logmeanexp(x: jax.Array, axis: int) -> jax.Array:
  return jax.nn.logsumexp(x, axis=axis) - jnp.log(x.shape[axis])


def importance_weighted_loss(log_weights_fn: LogWeightsFn, estimator: str,
                             strata_weights: jax.Array | None = None
                             ) -> tuple[jax.Array, jax.Array, Any]:
  """Returns (loss to minimise, bound per (S, B), aux of the evaluation used for the loss).

  The loss averages the per-(S, B) bounds uniformly, or with `strata_weights` (S, B) (summing
  to 1: incomplete data's observed strata, 1 / (n_observed * B) each) as their weighted sum.
  """
  def average(per_stratum):  # (S, B) -> ()
    if strata_weights is None:
      return per_stratum.mean()
    return (strata_weights * per_stratum).sum()

  if estimator == 'elbo':
    lw, aux = log_weights_fn(None, False)
    bound = lw.mean(axis=1)
    return -average(bound), bound, aux
  if estimator == 'iwae':
    lw, aux = log_weights_fn(None, False)
    bound = logmeanexp(lw, axis=1)
    return -average(bound), bound, aux
  if estimator == 'dreg':
    # First pass for the normalised weights (constants); the same key gives the same samples.
    lw0, _ = log_weights_fn(None, False)
    lw0 = jax.lax.stop_gradient(lw0)
    weights = jax.nn.softmax(lw0, axis=1)
    lw, aux = log_weights_fn(weights, True)
    loss = -average((weights * lw).sum(axis=1))
    return loss, logmeanexp(lw0, axis=1), aux
  raise ValueError(f'unknown estimator {estimator!r}; choose one of {ESTIMATORS}.')


class Latents(NamedTuple):
  """Reparameterised samples of one MMVAE+ step.

  w:     (M, K, B, latent_w)  w_r ~ q(w | x_r)
  z:     (M, K, B, latent_z)  z_r ~ q(z | x_r)
  w_aux: (M, M, K, B, latent_w)  [d, r]: w_d ~ r_d(w), used to decode modality d from source r
  """
  w: jax.Array
  z: jax.Array
  w_aux: jax.Array


def sample_latents(key: jax.Array, post: models.Posteriors, aux_scale: jax.Array,
                   num_samples: int) -> Latents:
  """Draws K samples per source from the posteriors, and auxiliary-prior w for cross decodes."""
  k_w, k_z, k_aux = jax.random.split(key, 3)
  m, b = post.w_loc.shape[:2]

  def draw(k, loc, scale):  # (M, B, D) -> (M, K, B, D)
    shape = (m, num_samples) + loc.shape[1:]
    return dists.laplace_sample(k, jnp.broadcast_to(loc[:, None], shape),
                                jnp.broadcast_to(scale[:, None], shape))

  aux_shape = (m, m, num_samples, b, aux_scale.shape[-1])
  w_aux = dists.laplace_sample(k_aux, jnp.zeros(aux_shape),
                               jnp.broadcast_to(aux_scale[:, None, None, None], aux_shape))
  return Latents(draw(k_w, post.w_loc, post.w_scale), draw(k_z, post.z_loc, post.z_scale), w_aux)


def mmvaeplus_log_weights(vae: models.MultimodalVAE, params, x: models.Data,
                          post: models.Posteriors, latents: Latents,
                          log_prior_z: Callable[[jax.Array], jax.Array], beta: float,
                          observed: jax.Array | None = None):
  """MMVAE+ log-weights per source r, sample k, example b: (M, K, B), and their terms.

  lw_r = sum_d log p(x_d | w, z_r) + beta * (log p(z_r) + log p(w_r) - log q_mix(z_r | X)
                                             - log q(w_r | x_r)),
  decoding x_r from (w_r, z_r) and every other x_d from (w_d ~ r_d, z_r); q_mix is the uniform
  mixture of the M unimodal z-posteriors. x: the batch's modalities.

  observed bool (M, B) (incomplete data): d and the mixture's components run over the example's
  observed modalities only, and a missing source's lw_r is 0 (its stratum takes no part: the
  caller weights strata by aggregation.observed_weights).
  """
  w, z = latents.w, latents.z
  m = w.shape[0]
  # Decoder d reads source r: its own w where d == r, the auxiliary prior's otherwise.
  eye = jnp.eye(m, dtype=bool)[:, :, None, None, None]
  w_dec = jnp.where(eye, w[None], latents.w_aux)  # (Md, Mr, K, B, Dw)
  z_dec = jnp.broadcast_to(z[None], (m,) + z.shape)  # (Md, Mr, K, B, Dz)
  log_px = vae.weighted_log_likelihood(  # (Md, Mr, K, B)
      params, jnp.concatenate([w_dec, z_dec], axis=-1), x)

  log_qw = dists.laplace_log_prob(w, post.w_loc[:, None], post.w_scale[:, None])
  log_qz_each = dists.laplace_log_prob(z[:, None], post.z_loc[None, :, None],
                                       post.z_scale[None, :, None])  # (Mr, Mm, K, B)
  if observed is None:
    log_qz = dists.mixture_log_prob(log_qz_each, axis=1)
  else:  # The mixture of the observed experts: (1 / n_b) sum_{m observed} q_m.
    present = observed[None, :, None, :]  # (1, Mm, 1, B)
    log_qz = (jax.nn.logsumexp(jnp.where(present, log_qz_each, -jnp.inf), axis=1)
              - jnp.log(observed.sum(axis=0).astype(log_qz_each.dtype)))
    log_px = jnp.where(observed[:, None, None, :], log_px, 0.0)  # Drop missing targets d.
  log_pz = log_prior_z(z)
  log_pw = models.standard_laplace_log_prob(w)
  recon = log_px.sum(axis=0)
  kl = log_qz + log_qw - log_pz - log_pw  # Single-sample estimate of the KL terms.
  lw = recon + beta * -kl
  if observed is not None:  # A missing source's stratum: 0 (finite, no gradient).
    source = observed[:, None, :]  # (Mr, 1, B)
    lw, recon, kl = (jnp.where(source, a, 0.0) for a in (lw, recon, kl))
  terms = {'recon': recon, 'kl': kl, 'log_px_self': jnp.einsum('rrkb->rkb', log_px),
           'log_prior_z': log_pz}
  return lw, terms


class VaeAux(NamedTuple):
  """What the EBM half of the step needs from the VAE half (all gradient-stopped)."""
  post: models.Posteriors  # (M, B, .)
  latents: Latents | None  # The MoE objectives' samples (the EBM's posterior chains start there).
  metrics: dict[str, jax.Array]  # At least 'vae_loss', 'bound' and 'recon' (batch means).
  # Incomplete data: bool (M, B), which modalities each example has; None for complete batches.
  observed: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
  """A registered objective and what the rest of the library needs to know about it."""
  fn: Callable[..., tuple[jax.Array, VaeAux]]
  aggregation: str  # How q(z | X_S) is formed: aggregation.AGGREGATIONS.
  distribution: str  # The posterior family it is written for: distributions.FAMILIES.
  private_latents: bool  # Uses modality-specific latents w_m (latent_w > 0) or not (= 0).
  estimators: tuple[str, ...] = ('elbo',)
  supports_ebm_prior: bool = False  # Takes log_prior_z (the EBM prior of z) into its bound.
  # Written for modalities of one spec (e.g. it stacks their data): refused on other datasets.
  identical_modalities: bool = False
  # Added to every posterior and auxiliary-prior scale, as the family's reference does (None:
  # MMVAE's 1e-6 for Laplace, nothing for the Gaussian references' exp(logvar / 2)).
  scale_eps: float | None = None
  # Trains on batches with an 'observed' mask (data/missing.py); others refuse incomplete data.
  supports_incomplete: bool = False

  def model_defaults(self) -> dict:
    """The config.model fields this objective sets: its posterior family, the latent split
    (MMVAE+: private w_m 32 and shared z 32; single-latent models: z of the same total size)
    and the scale eta."""
    eps = self.scale_eps if self.scale_eps is not None else (
        1e-6 if self.distribution == 'laplace' else 0.0)
    return {'distribution': self.distribution, 'latent_w': 32 if self.private_latents else 0,
            'latent_z': 32 if self.private_latents else 64, 'scale_eps': eps}


OBJECTIVES: registry.Registry = registry.Registry('objective')


def register(name: str, *, aggregation: str, distribution: str, private_latents: bool,
             estimators: tuple[str, ...] = ('elbo',), supports_ebm_prior: bool = False,
             identical_modalities: bool = False, scale_eps: float | None = None,
             supports_incomplete: bool = False):
  """Decorator: registers `fn` as objective `name` (config.model.objective, and a model name:
  config_lib.model_spec). Names are unique. supports_incomplete: `fn` takes `observed` (bool
  (M, B)) and trains on incomplete data (module docstring)."""
  if aggregation not in agg.AGGREGATIONS:
    raise ValueError(f'aggregation {aggregation!r} is not one of {agg.AGGREGATIONS}.')
  if distribution not in dists.FAMILIES:
    raise ValueError(f'distribution {distribution!r} is not one of {dists.FAMILIES}.')

  def decorate(fn):
    OBJECTIVES.add(name, ObjectiveSpec(fn, aggregation, distribution, private_latents,
                                       tuple(estimators), supports_ebm_prior,
                                       identical_modalities, scale_eps, supports_incomplete))
    return fn

  return decorate


def get(name: str) -> ObjectiveSpec:
  return OBJECTIVES.lookup(name)


def validate(model_config, dataset) -> None:
  """config.model against its objective's spec (and the dataset's modalities it needs): raises
  ValueError('invalid config: ...')."""
  m, check = model_config, registry.check
  spec = get(m.objective)
  check(m.distribution == spec.distribution,
        f'model.distribution={m.distribution!r}: objective {m.objective!r} is written for '
        f'{spec.distribution!r} posteriors')
  check(m.estimator in spec.estimators,
        f'model.estimator={m.estimator!r}: objective {m.objective!r} supports {spec.estimators}')
  check(m.num_samples >= 1, f'model.num_samples={m.num_samples} < 1')
  check(m.estimator == 'elbo' or m.num_samples > 1,
        f'model.estimator={m.estimator!r} needs model.num_samples > 1')
  check(len(spec.estimators) > 1 or m.num_samples == 1,
        f'model.num_samples={m.num_samples}: objective {m.objective!r} uses one sample')
  if spec.identical_modalities:
    kinds = {s.unnamed() for s in dataset.modalities}
    check(len(kinds) == 1, f'model.objective={m.objective!r} needs modalities of one spec; '
          f'dataset {dataset.name!r} has ' + ', '.join(
              f'{s.name} {s.kind} {s.shape}' for s in dataset.modalities))
  if spec.private_latents:
    check(m.latent_w > 0, f'model.latent_w={m.latent_w}: objective {m.objective!r} needs '
          'modality-specific latents (> 0)')
  else:
    check(m.latent_w == 0, f'model.latent_w={m.latent_w}: objective {m.objective!r} has one '
          'shared latent (set 0)')


@register('mmvae', aggregation='moe', distribution='laplace', private_latents=False,
          estimators=ESTIMATORS, supports_ebm_prior=True, supports_incomplete=True)
@register('mmvaeplus', aggregation='moe', distribution='laplace', private_latents=True,
          estimators=ESTIMATORS, supports_ebm_prior=True, supports_incomplete=True,
          scale_eps=1e-20)  # The reference's eta.
def mmvaeplus_objective(vae: models.MultimodalVAE, params, x: models.Data, key: jax.Array, *,
                        beta: float, num_samples: int, estimator: str,
                        log_prior_z: Callable[[jax.Array], jax.Array] = models.standard_laplace_log_prob,
                        observed: jax.Array | None = None) -> tuple[jax.Array, VaeAux]:
  """The MMVAE+ loss for a batch x of every modality. `log_prior_z` (..., D) -> (...) is the
  shared latent's prior (Laplace(0, 1), or f_a + log p0 for the EBM prior).

  observed bool (M, B) (incomplete data): each example's bound averages its observed sources'
  strata (mixture and reconstructions over its observed modalities: mmvaeplus_log_weights).

  With latent_w = 0 this is MMVAE's objective (Shi et al. 2019): the stratified MoE bound
  lw_r = sum_d log p(x_d | z_r) + beta * (log p(z_r) - log q_mix(z_r | X)), z_r ~ q(z | x_r).
  """
  post = vae.encode(params, x)
  aux_scale = vae.aux_prior_scale(params)

  def log_weights_fn(grad_weights, stop_posterior):
    latents = sample_latents(key, post, aux_scale, num_samples)
    if grad_weights is not None:
      g = grad_weights[..., None]
      latents = latents._replace(w=scale_gradient(latents.w, g), z=scale_gradient(latents.z, g))
    q = jax.tree.map(jax.lax.stop_gradient, post) if stop_posterior else post
    lw, terms = mmvaeplus_log_weights(vae, params, x, q, latents, log_prior_z, beta, observed)
    return lw, (latents, terms)

  weights = None if observed is None else agg.observed_weights(observed)
  loss, bound, (latents, terms) = importance_weighted_loss(log_weights_fn, estimator, weights)
  if weights is None:
    average = lambda a: a.mean()
  else:  # Over observed strata (samples K averaged first).
    average = lambda a: (weights * (a.mean(axis=1) if a.ndim == 3 else a)).sum()
  metrics = {'vae_loss': loss, 'bound': average(bound), 'recon': average(terms['recon']),
             'kl': average(terms['kl']), 'log_px_self': average(terms['log_px_self']),
             'posterior_log_scale_z': jnp.log(post.z_scale).mean()}
  stop = jax.lax.stop_gradient
  return loss, VaeAux(jax.tree.map(stop, post), jax.tree.map(stop, latents),
                      jax.tree.map(stop, metrics), observed)


# ----------------------------------------------------------------------------- PoE family
# Gaussian posteriors, one shared latent (latent_w = 0), closed-form KL terms, one sample.


def _log_px(vae: models.MultimodalVAE, params, x: models.Data, z: jax.Array) -> jax.Array:
  """log p(x_d | z) summed over each example's elements, times modality d's likelihood weight;
  z (M, ..., B, Dz) with row d read by decoder d -> (M, ..., B)."""
  return vae.weighted_log_likelihood(params, z, x)


def _broadcast_to_decoders(z: jax.Array, m: int) -> jax.Array:
  return jnp.broadcast_to(z[None], (m,) + z.shape)


def _poe_metrics(loss, bound, recon, kl, post) -> dict[str, jax.Array]:
  return {'vae_loss': loss, 'bound': bound.mean(), 'recon': recon.mean(), 'kl': kl.mean(),
          'posterior_log_scale_z': jnp.log(post.z_scale).mean()}


def _aux(post, metrics, observed=None) -> VaeAux:
  stop = jax.lax.stop_gradient
  return VaeAux(jax.tree.map(stop, post), None, jax.tree.map(stop, metrics), observed)


@register('mvae', aggregation='poe', distribution='gaussian', private_latents=False,
          supports_incomplete=True)
def mvae_objective(vae: models.MultimodalVAE, params, x: models.Data, key: jax.Array, *,
                   beta: float, num_samples: int = 1, estimator: str = 'elbo',
                   log_prior_z=None, observed: jax.Array | None = None
                   ) -> tuple[jax.Array, VaeAux]:
  """MVAE (Wu & Goodman 2018) with sub-sampled training: the joint ELBO plus every unimodal one.

  q_S = PoE({q(z | x_m)}_{m in S} and the prior N(0, I)); ELBO_S = E_{q_S}[sum_{d in S}
  log p(x_d | z)] - beta KL(q_S || N(0, I)); bound = ELBO_{all} + sum_m ELBO_{m}.
  observed bool (M, B): 'all' is the example's observed modalities, m runs over them.
  """
  del num_samples, estimator, log_prior_z  # One sample, closed-form KL (checked by config).
  post = vae.encode(params, x)
  m = vae.num_modalities
  k_joint, k_uni = jax.random.split(key)
  experts = jnp.ones((m,), bool) if observed is None else observed
  loc, scale = agg.product_of_experts(post.z_loc, post.z_scale, experts, prior_expert=True)
  z = dists.normal_sample(k_joint, loc, scale)  # (B, D)
  log_px_joint = _log_px(vae, params, x, _broadcast_to_decoders(z, m))  # (M, B)
  kl_joint = dists.kl_normal(loc, scale)
  # Unimodal: expert m times the prior; decoder m reads its own modality's sample.
  precision = 1.0 / jnp.square(post.z_scale)
  loc_m, scale_m = post.z_loc * precision / (precision + 1.0), jax.lax.rsqrt(precision + 1.0)
  z_m = dists.normal_sample(k_uni, loc_m, scale_m)  # (M, B, D)
  elbo_uni = _log_px(vae, params, x, z_m) - beta * dists.kl_normal(loc_m, scale_m)  # (M, B)
  if observed is None:
    recon_joint = log_px_joint.sum(axis=0)
    bound = recon_joint - beta * kl_joint + elbo_uni.sum(axis=0)
  else:
    recon_joint = jnp.where(observed, log_px_joint, 0.0).sum(axis=0)
    bound = recon_joint - beta * kl_joint + jnp.where(observed, elbo_uni, 0.0).sum(axis=0)
  loss = -bound.mean()
  return loss, _aux(post, _poe_metrics(loss, bound, recon_joint, kl_joint, post), observed)


def jensen_shannon_dynamic_prior(loc: jax.Array, scale: jax.Array,
                                 observed: jax.Array | None = None) -> jax.Array:
  """mmJSD's regulariser: sum_j pi_j KL(q_j || f) over the M unimodal posteriors and the prior
  q_0 = N(0, I), pi uniform (1 / (M + 1)), f = PoE of all of them (the dynamic prior).

  loc, scale (M, B, D) -> (B,). observed bool (M, B): the experts are the example's observed
  posteriors and the prior (pi = 1 / (n_observed + 1)).
  """
  m = loc.shape[0]
  experts = jnp.ones((m,), bool) if observed is None else observed
  loc_f, scale_f = agg.product_of_experts(loc, scale, experts, prior_expert=True)
  kl_each = dists.kl_normal(loc, scale, loc_f[None], scale_f[None])  # (M, B)
  kl_prior = dists.kl_normal(jnp.zeros_like(loc_f), jnp.ones_like(scale_f), loc_f, scale_f)
  if observed is None:
    return (kl_each.sum(axis=0) + kl_prior) / (m + 1)
  n = observed.sum(axis=0).astype(loc.dtype)
  return (jnp.where(observed, kl_each, 0.0).sum(axis=0) + kl_prior) / (n + 1)


@register('mmjsd', aggregation='moe', distribution='gaussian', private_latents=False,
          supports_incomplete=True)
def mmjsd_objective(vae: models.MultimodalVAE, params, x: models.Data, key: jax.Array, *,
                    beta: float, num_samples: int = 1, estimator: str = 'elbo',
                    log_prior_z=None, observed: jax.Array | None = None
                    ) -> tuple[jax.Array, VaeAux]:
  """mmJSD (Sutter et al. 2020): E_{q(z|X)}[log p(X | z)] - beta JS, q(z | X) the uniform
  mixture of the unimodal posteriors (stratified: one sample per source, every modality
  decoded from it), JS with the dynamic prior (jensen_shannon_dynamic_prior).
  observed bool (M, B): sources, targets and experts are the example's observed modalities."""
  del num_samples, estimator, log_prior_z
  post = vae.encode(params, x)
  m = vae.num_modalities
  z = dists.normal_sample(key, post.z_loc, post.z_scale)  # (M_src, B, D)
  log_px = _log_px(vae, params, x, _broadcast_to_decoders(z, m))  # (M_dec, M_src, B)
  if observed is None:
    recon = log_px.sum(axis=0).mean(axis=0)
  else:
    per_source = jnp.where(observed[:, None], log_px, 0.0).sum(axis=0)  # (M_src, B)
    recon = (jnp.where(observed, per_source, 0.0).sum(axis=0)
             / observed.sum(axis=0).astype(per_source.dtype))
  js = jensen_shannon_dynamic_prior(post.z_loc, post.z_scale, observed)
  bound = recon - beta * js
  loss = -bound.mean()
  return loss, _aux(post, _poe_metrics(loss, bound, recon, js, post), observed)


def subset_posteriors(loc: jax.Array, scale: jax.Array) -> tuple[jax.Array, jax.Array]:
  """PoE of every non-empty subset's experts (no prior expert): (M, B, D) -> (S, B, D) twice,
  subsets in aggregation.nonempty_subsets order."""
  subsets = jnp.asarray(agg.nonempty_subsets(loc.shape[0]))
  return jax.vmap(lambda s: agg.product_of_experts(loc, scale, s))(subsets)


@register('mopoe', aggregation='mopoe', distribution='gaussian', private_latents=False,
          supports_incomplete=True)
def mopoe_objective(vae: models.MultimodalVAE, params, x: models.Data, key: jax.Array, *,
                    beta: float, num_samples: int = 1, estimator: str = 'elbo',
                    log_prior_z=None, observed: jax.Array | None = None
                    ) -> tuple[jax.Array, VaeAux]:
  """MoPoE (Sutter et al. 2021): q(z | X) = mean over the 2^M - 1 subsets S of PoE(q_S).

  bound = E_{q(z|X)}[sum_d log p(x_d | z)] - beta mean_S KL(q_S || N(0, I)): the reconstruction
  from one subset drawn uniformly per example (a draw of the mixture), the KL of the mixture
  replaced by the mean of its components' KLs (an upper bound, as in the MoPoE code).
  observed bool (M, B): the mixture is over the subsets of the example's observed modalities
  (MultiVae's availabilities), d runs over them.
  """
  del num_samples, estimator, log_prior_z
  post = vae.encode(params, x)
  m, b = post.z_loc.shape[:2]
  k_pick, k_z = jax.random.split(key)
  locs, scales = subset_posteriors(post.z_loc, post.z_scale)  # (S, B, D)
  kl_each = dists.kl_normal(locs, scales)  # (S, B)
  rows = jnp.arange(b)
  if observed is None:
    kl = kl_each.mean(axis=0)
    pick = jax.random.randint(k_pick, (b,), 0, locs.shape[0])
  else:
    subsets = jnp.asarray(agg.nonempty_subsets(m))  # (S, M)
    inside = ~jnp.any(subsets[:, :, None] & ~observed[None], axis=1)  # (S, B)
    kl = (jnp.where(inside, kl_each, 0.0).sum(axis=0)
          / inside.sum(axis=0).astype(kl_each.dtype))
    pick = agg.uniform_choice(k_pick, inside.T)
  z = dists.normal_sample(k_z, locs[pick, rows], scales[pick, rows])
  log_px = _log_px(vae, params, x, _broadcast_to_decoders(z, m))  # (M, B)
  recon = (log_px if observed is None else jnp.where(observed, log_px, 0.0)).sum(axis=0)
  bound = recon - beta * kl
  loss = -bound.mean()
  return loss, _aux(post, _poe_metrics(loss, bound, recon, kl, post), observed)
