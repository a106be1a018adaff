"""A Gaussian mixture on z, fitted by EM: the post-hoc prior MultiVae's GaussianMixtureSampler
fits to a trained model's aggregate posterior (there: scikit-learn's EM, full covariances, K = 10).

  p(z) = sum_k pi_k N(z; mu_k, L_k L_k^T)      params {'logits': (K,), 'means': (K, D),
                                                       'scale_tril': (K, D, D) lower-triangular}

Diagonal covariances keep L_k diagonal. Written here rather than taken from distrax or TFP's JAX
substrate: TFP 0.25 (distrax's backend) does not import with jax 0.10 (it reads
jax.interpreters.xla.pytype_aval_mappings, gone since), and the density is a few lines.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_ebm_jax.latent import priors

COVARIANCES = ('full', 'diag')


def log_prob(params, z: jax.Array) -> jax.Array:
  """log p(z) of the mixture: z (..., D) -> (...)."""
  return jax.nn.logsumexp(component_log_probs(params, z), axis=-1)


def component_log_probs(params, z: jax.Array) -> jax.Array:
  """log pi_k + log N(z; mu_k, L_k L_k^T) per component: z (..., D) -> (..., K)."""
  tril = params['scale_tril']  # (K, D, D)
  d = z.shape[-1]
  diff = z[..., None, :] - params['means']  # (..., K, D)
  white = jnp.einsum('kij,...kj->...ki', tril_inverse(tril), diff)  # L_k^-1 (z - mu_k)
  mahalanobis = jnp.square(white).sum(-1)  # (..., K)
  log_det = jnp.log(jnp.abs(jnp.diagonal(tril, axis1=-2, axis2=-1))).sum(-1)  # (K,)
  log_normal = -0.5 * mahalanobis - log_det - 0.5 * d * math.log(2 * math.pi)
  return jax.nn.log_softmax(params['logits']) + log_normal


def tril_inverse(tril: jax.Array) -> jax.Array:
  """L^-1 of lower-triangular L (..., D, D) by forward substitution, row by row.

  Plain XLA ops on purpose, not solve_triangular: on CPU that is a LAPACK custom call that
  splits its batch over XLA's intra-op thread pool and waits, and two such calls running at
  once in one program (this density beside another prior's, experiments/true_bound.py) can
  occupy every worker of a 2-core machine's pool and wait on each other forever (jaxlib 0.10).
  """
  d = tril.shape[-1]
  eye = jnp.eye(d, dtype=tril.dtype)
  strict = jnp.tril(tril, -1)

  def row(i, inv):  # Rows >= i of inv are still zero: strict[i] @ inv sums over j < i.
    r = (eye[i] - jnp.einsum('...j,...jk->...k', strict[..., i, :], inv)) / tril[..., i, i, None]
    return inv.at[..., i, :].set(r)

  return jax.lax.fori_loop(0, d, row, jnp.zeros_like(tril))


def sample(params, key: jax.Array, num: int) -> jax.Array:
  """num draws (num, D): a component by its weight, then its Gaussian."""
  k_pick, k_noise = jax.random.split(key)
  k = jax.random.categorical(k_pick, params['logits'], shape=(num,))
  noise = jax.random.normal(k_noise, (num, params['means'].shape[-1]))
  return params['means'][k] + jnp.einsum('nij,nj->ni', params['scale_tril'][k], noise)


@dataclasses.dataclass(frozen=True)
class GaussianMixturePrior(priors.Prior):
  """The mixture as a prior on z (priors.py's interface). Fitted after training (fit), not in
  the training step: `learn` returns zero gradients."""
  num_components: int
  covariance: str = 'full'  # One of COVARIANCES.

  def init(self, key, latent_dim: int):
    del key
    k = self.num_components
    return {'logits': jnp.zeros((k,)), 'means': jnp.zeros((k, latent_dim)),
            'scale_tril': jnp.broadcast_to(jnp.eye(latent_dim), (k, latent_dim, latent_dim))}

  def log_prob(self, params, beta):
    del beta
    return lambda z: log_prob(params, z)

  def sample(self, params, key, num: int, latent_dim: int, keep_trajectory: bool = False,
             state=None):
    del latent_dim, keep_trajectory, state
    return sample(params, key, num), {}

  def learn(self, params, state, keys, vae, vae_params, x, aux):
    del keys, vae, vae_params, x, aux
    return priors.PriorUpdate(jax.tree.map(jnp.zeros_like, params), state, {},
                              jnp.array(True), jnp.array(True))

  def describe(self) -> str:
    return (f'z ~ a {self.num_components}-component Gaussian mixture ({self.covariance} '
            'covariances) fitted to q(z | X)')


def _kmeans_plus_plus(z: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  """k starting means spread over the data (Arthur & Vassilvitskii 2007): (k, D)."""
  means = [z[rng.integers(len(z))]]
  for _ in range(1, k):
    d2 = np.min(np.square(z[:, None] - np.stack(means)[None]).sum(-1), axis=1)
    means.append(z[rng.choice(len(z), p=d2 / d2.sum())])
  return np.stack(means)


def _em_step(params, z: jax.Array, diagonal: bool, reg: float):
  """One EM step: (new params, mean log-likelihood of z under the old params)."""
  log_joint = component_log_probs(params, z)  # (N, K)
  log_lik = jax.nn.logsumexp(log_joint, axis=-1)
  resp = jnp.exp(log_joint - log_lik[:, None])  # (N, K)
  counts = resp.sum(0) + 10 * jnp.finfo(z.dtype).eps  # (K,)
  means = resp.T @ z / counts[:, None]
  diff = z[:, None, :] - means  # (N, K, D)
  d = z.shape[-1]
  if diagonal:
    var = jnp.einsum('nk,nkd->kd', resp, jnp.square(diff)) / counts[:, None] + reg
    tril = jax.vmap(jnp.diag)(jnp.sqrt(var))
  else:
    cov = jnp.einsum('nk,nki,nkj->kij', resp, diff, diff) / counts[:, None, None]
    tril = jnp.linalg.cholesky(cov + reg * jnp.eye(d))
  new = {'logits': jnp.log(counts / counts.sum()), 'means': means, 'scale_tril': tril}
  return new, log_lik.mean()


_em_step_jit = jax.jit(_em_step, static_argnames=('diagonal',))


def fit(z, num_components: int, key: jax.Array, *, covariance: str = 'full',
        max_iter: int = 500, tol: float = 1e-3, reg: float = 1e-6) -> tuple[dict, dict]:
  """EM from k-means++ means, the data's covariance and equal weights, until the mean
  log-likelihood gains less than `tol` (sklearn's criterion; its reg_covar 1e-6 on the
  diagonal). z (N, D) -> (params, {'iterations', 'log_likelihood', 'converged', 'seconds'})."""
  if covariance not in COVARIANCES:
    raise ValueError(f'covariance {covariance!r}: choose one of {COVARIANCES}.')
  start = time.time()
  z = np.asarray(z, np.float32)
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
  means = _kmeans_plus_plus(z, num_components, rng)
  cov = np.cov(z, rowvar=False).reshape(z.shape[1], z.shape[1]) + reg * np.eye(z.shape[1])
  if covariance == 'diag':
    cov = np.diag(np.diag(cov))
  params = {'logits': jnp.zeros((num_components,)), 'means': jnp.asarray(means),
            'scale_tril': jnp.broadcast_to(jnp.linalg.cholesky(jnp.asarray(cov, jnp.float32)),
                                           (num_components,) + cov.shape)}
  zj, previous, converged, iterations = jnp.asarray(z), -np.inf, False, 0
  while iterations < max_iter:
    iterations += 1
    params, log_lik = _em_step_jit(params, zj, covariance == 'diag', reg)
    log_lik = float(log_lik)
    if abs(log_lik - previous) < tol:
      converged = True
      break
    previous = log_lik
  final = float(log_prob(params, zj).mean())
  return params, {'iterations': iterations, 'log_likelihood': final, 'converged': converged,
                  'seconds': time.time() - start}


def fit_selecting(z, choices, key: jax.Array, *, held_out: float = 0.1, **settings
                  ) -> tuple[dict, dict]:
  """`fit` with K chosen among `choices` by the mean log-likelihood of a held-out fraction of
  z, then refitted on all of it: (params, info with 'num_components' and 'held_out' {K: LL})."""
  z = np.asarray(z, np.float32)
  k_split, k_fit = jax.random.split(key)
  order = np.asarray(jax.random.permutation(k_split, len(z)))
  n_out = max(1, int(round(held_out * len(z))))
  train, test = z[order[n_out:]], jnp.asarray(z[order[:n_out]])
  scores = {}
  for k in choices:
    params, _ = fit(train, int(k), jax.random.fold_in(k_fit, int(k)), **settings)
    scores[int(k)] = float(log_prob(params, test).mean())
  best = max(scores, key=scores.get)
  params, info = fit(z, best, k_fit, **settings)
  return params, {**info, 'num_components': best, 'held_out': scores}
