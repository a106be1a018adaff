"""Latent representation quality: a linear classifier on the shared latent z.

The protocol of the MMVAE+ and MoPoE papers' code: encode each example from one modality alone,
take the mean of q(z | x_m), fit a multinomial logistic regression from the training set's means
to the label, report its accuracy on the test set's means, per source modality. For EBM models
the post-LD variant replaces the mean by the end of the posterior Langevin chain on x_m alone
(started from a draw of q(z | x_m)): what MOE-EBM's inference returns. Models with private
latents (MMVAE+) also get the probe of the mean of q(w_m | x_m): how much of the label a
modality keeps to itself, which cross generation cannot use (it draws w from the prior).
"""

from __future__ import annotations

from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from moe_ebm_jax import generation
from moe_ebm_jax.vae import aggregation as agg
from moe_ebm_jax.data import missing


def unimodal_means(model, vae_params, x) -> jax.Array:
  """The mean of q(z | x_m) for each modality alone under the model's aggregation: (M, B, Dz).

  'moe' and 'mopoe': expert m itself; 'poe': expert m times the prior expert N(0, I) (MVAE's
  unimodal posterior).
  """
  post = model.vae.encode(vae_params, x)
  if model.aggregation != 'poe':
    return post.z_loc
  m = model.vae.num_modalities
  return jnp.stack([agg.product_of_experts(post.z_loc, post.z_scale, jnp.arange(m) == i,
                                           prior_expert=True)[0] for i in range(m)])


def source_latents(state, x, key: jax.Array, *, model, post_ld: bool) -> jax.Array:
  """z from each modality alone, (M, B, Dz): unimodal_means (pre-LD), or the posterior chain's
  end on x_m alone (post-LD: the prior's refine_posterior)."""
  if not post_ld:
    return unimodal_means(model, state.vae_params, x)
  m = model.vae.num_modalities
  return jnp.stack([
      generation.conditional_generate(state, x, jnp.arange(m) == i, jax.random.fold_in(key, i),
                                      model=model, post_ld=True)[1] for i in range(m)])


def fit_linear_classifier(features: np.ndarray, labels: np.ndarray, num_classes: int, *,
                          l2: float = 1e-4, max_iter: int = 300) -> dict[str, np.ndarray]:
  """Multinomial logistic regression (features standardised by their training mean and sd,
  an L2 penalty `l2` on the weights) by L-BFGS: features (N, D), labels (N,) ->
  {'mean', 'scale', 'w' (D, K), 'b' (K,)}."""
  features = np.asarray(features, np.float64)
  mean, scale = features.mean(0), features.std(0) + 1e-8
  z = jnp.asarray((features - mean) / scale, jnp.float32)
  y = jnp.asarray(labels)
  params = {'w': jnp.zeros((z.shape[1], num_classes)), 'b': jnp.zeros((num_classes,))}

  def loss(p):
    logits = z @ p['w'] + p['b']
    return (optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() +
            0.5 * l2 * jnp.sum(jnp.square(p['w'])))

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  @jax.jit
  def run(params):
    def step(carry, _):
      p, s = carry
      value, grad = value_and_grad(p, state=s)
      updates, s = solver.update(grad, s, p, value=value, grad=grad, value_fn=loss)
      return (optax.apply_updates(p, updates), s), None
    (params, _), _ = jax.lax.scan(step, (params, solver.init(params)), None, length=max_iter)
    return params

  params = jax.device_get(run(params))
  return {'mean': mean, 'scale': scale, 'w': np.asarray(params['w']),
          'b': np.asarray(params['b'])}


def predict(classifier: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
  """Predicted classes (N,) of features (N, D)."""
  z = (np.asarray(features, np.float64) - classifier['mean']) / classifier['scale']
  return np.argmax(z @ classifier['w'] + classifier['b'], axis=-1)


def probe(model, state, train_batches: Iterable[dict], test_batches: Iterable[dict],
          num_classes: int, key: jax.Array) -> dict[str, Any]:
  """Linear-probe accuracy of the shared latent from each modality alone.

  Args:
    train_batches, test_batches: dicts with 'x' {name: (B, *shape)} and 'label' (B,), and for
      incomplete data 'observed' {name: (B,) bool}: each modality's probe is fitted and scored
      on the examples that have it.
  Returns:
    {'pre_ld': {'per_modality': {name: accuracy}, 'mean': float}, 'post_ld' likewise for a
    prior that refines the posterior (the EBM), 'private' likewise on the mean of q(w_m | x_m)
    for a model with private latents}; plus 'num_train', 'num_test'.
  """
  # {output name: (state, x, key) -> (M, B, D) features}, one jit each.
  latents = {tag: jax.jit(lambda s, x, k, ld=ld: source_latents(s, x, k, model=model, post_ld=ld))
             for tag, ld in (('pre_ld', False), ('post_ld', True))
             if not ld or model.prior.refines_posterior}
  if model.vae.latent_w:
    latents['private'] = jax.jit(lambda s, x, k: model.vae.encode(s.vae_params, x).w_loc)

  names = model.vae.names

  def collect(batches, k):
    zs, ys, seen = {tag: [] for tag in latents}, [], []
    for i, batch in enumerate(batches):
      x = jax.tree.map(jnp.asarray, batch['x'])
      for tag, fn in latents.items():
        zs[tag].append(np.asarray(fn(state, x, jax.random.fold_in(k, i))))
      ys.append(np.asarray(batch['label']))
      seen.append(missing.batch_observed(batch, names))
    return ({tag: np.concatenate(z, axis=1) for tag, z in zs.items()}, np.concatenate(ys),
            np.concatenate(seen, axis=1))

  k_train, k_test = jax.random.split(key)
  train_z, train_y, train_seen = collect(train_batches, k_train)
  test_z, test_y, test_seen = collect(test_batches, k_test)
  out: dict[str, Any] = {'num_train': int(len(train_y)), 'num_test': int(len(test_y))}
  for tag in latents:
    per = {}
    for m, name in enumerate(names):
      fit, score = train_seen[m], test_seen[m]
      classifier = fit_linear_classifier(train_z[tag][m][fit], train_y[fit], num_classes)
      per[name] = float(np.mean(predict(classifier, test_z[tag][m][score]) == test_y[score]))
    out[tag] = {'per_modality': per, 'mean': float(np.mean(list(per.values())))}
  return out
