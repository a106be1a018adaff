"""Optimisers: PyTorch's Adam (and AMSGrad) as an Optax transformation, and the two of a run.

The papers this library reproduces trained with `torch.optim.Adam` (MMVAE+: `amsgrad=True`, lr
1e-3; the latent-EBM work of Pang et al.: beta1 0.5). `optax.amsgrad` is a different algorithm:
it keeps the running maximum of the bias-corrected second moment, while torch keeps the maximum
of the raw second moment and divides it by the current bias correction. Early in training,
when (1 - b2^t) is small and the gradients shrink, optax's maximum stays pinned to the large
corrected values of the first steps, and its updates become several times smaller than torch's
(docs/fidelity.md has the measurement). `torch_adam` is torch's algorithm step for step:

  t <- t + 1
  m <- b1 m + (1 - b1) g                 v <- b2 v + (1 - b2) g^2
  v_max <- max(v_max, v)                 (amsgrad only; v_max starts at 0)
  denom <- sqrt(v_max or v) / sqrt(1 - b2^t) + eps
  update <- -(lr / (1 - b1^t)) m / denom

(no weight decay; torch's `maximize`, `foreach` and `fused` options do not change the result).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict
import optax

from moe_ebm_jax import registry

IMPLEMENTATIONS = ('torch', 'optax')


class TorchAdamState(NamedTuple):
  """State of `torch_adam`: the step count and the moments, each a pytree like the params.

  max_exp_avg_sq is the running maximum of exp_avg_sq with amsgrad, and None without.
  """
  count: jax.Array  # int32 (): steps taken.
  exp_avg: Any  # m, the first moment.
  exp_avg_sq: Any  # v, the second moment.
  max_exp_avg_sq: Any  # v_max (amsgrad) or None.


def torch_adam(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-8, amsgrad: bool = False) -> optax.GradientTransformation:
  """`torch.optim.Adam(lr, betas=(b1, b2), eps, amsgrad)` as an Optax transformation.

  Returns updates to add to the params (optax.apply_updates). `learning_rate` may be an Optax
  schedule of the step count (0-based, as optax's). Moments are kept in the params' dtypes.
  """

  def init(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return TorchAdamState(count=jnp.zeros((), jnp.int32), exp_avg=zeros(), exp_avg_sq=zeros(),
                          max_exp_avg_sq=zeros() if amsgrad else None)

  def update(grads, state, params=None):
    del params
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    count = state.count + 1
    # 1 - b^t as -expm1(t log b): exact to float32's precision where 1 - b**t would lose
    # digits to cancellation (1 - 0.999 in float32 is off by 6e-5; torch works in double here).
    t = count.astype(jnp.result_type(float))
    bias_correction1 = -jnp.expm1(t * math.log(b1))
    bias_correction2_sqrt = jnp.sqrt(-jnp.expm1(t * math.log(b2)))
    step_size = lr / bias_correction1
    exp_avg = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.exp_avg, grads)
    exp_avg_sq = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.exp_avg_sq, grads)
    if amsgrad:
      max_exp_avg_sq = jax.tree.map(jnp.maximum, state.max_exp_avg_sq, exp_avg_sq)
      second = max_exp_avg_sq
    else:
      max_exp_avg_sq = None
      second = exp_avg_sq
    updates = jax.tree.map(
        lambda m, v: (-step_size * m / (jnp.sqrt(v) / bias_correction2_sqrt + eps)).astype(m.dtype),
        exp_avg, second)
    return updates, TorchAdamState(count, exp_avg, exp_avg_sq, max_exp_avg_sq)

  return optax.GradientTransformation(init, update)


def adam(implementation: str, learning_rate: optax.ScalarOrSchedule, *, b1: float = 0.9,
         b2: float = 0.999, eps: float = 1e-8, amsgrad: bool = False
         ) -> optax.GradientTransformation:
  """Adam or AMSGrad by `implementation`: 'torch' (torch.optim.Adam) or 'optax'."""
  if implementation == 'torch':
    return torch_adam(learning_rate, b1, b2, eps, amsgrad)
  if implementation == 'optax':
    return (optax.amsgrad if amsgrad else optax.adam)(learning_rate, b1=b1, b2=b2, eps=eps)
  raise ValueError(f'unknown optimiser implementation {implementation!r}; choose one of '
                   f'{IMPLEMENTATIONS}.')


def make_optimizers(config: ml_collections.ConfigDict
                    ) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """(VAE optimiser, prior optimiser): separate transformations with separate states.

  The VAE's: config.optim (the MMVAE+ reference: torch Adam with amsgrad, lr 1e-3). The
  reference minimises the bound SUMMED over the batch; our loss is its batch MEAN, so our
  gradients are 1 / batch_size of its. Adam's updates do not depend on the gradients' scale
  except through eps, so with implementation 'torch' eps is divided by the (global) batch size:
  the updates are then the reference's exactly. The prior's (of any prior with parameters, the
  EBM's by default): Adam with config.prior_optim's lr and betas (Pang et al. average their EBM
  loss over the batch, as we do: eps as given).
  """
  optim = config.optim
  eps = optim.eps / config.batch_size if optim.implementation == 'torch' else optim.eps
  vae_tx = adam(optim.implementation, optim.learning_rate, eps=eps, amsgrad=optim.amsgrad)
  if optim.grad_clip_norm is not None:
    vae_tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), vae_tx)
  prior = config.prior_optim
  prior_tx = adam(optim.implementation, prior.learning_rate, b1=prior.b1, b2=prior.b2,
                  eps=optim.eps)
  return vae_tx, prior_tx


def default_config() -> dict:
  """config.optim (the VAE's optimiser) and config.prior_optim (the prior's parameters', any
  prior that has some; Pang et al.'s for the EBM)."""
  return {
      'optim': {
          'learning_rate': 1e-3,  # MMVAE+: torch.optim.Adam(amsgrad=True), lr 1e-3.
          'amsgrad': True,
          # 'torch': torch.optim.Adam's algorithm (torch_adam), the references'; 'optax':
          # optax.adam / optax.amsgrad, whose AMSGrad takes several times smaller steps early.
          'implementation': 'torch',
          # Adam's eps as the reference sets it, for its batch-summed loss (make_optimizers).
          'eps': 1e-8,
          'grad_clip_norm': config_dict.placeholder(float),  # None: no clipping (as MMVAE+).
      },
      'prior_optim': {'learning_rate': 2e-5, 'b1': 0.5, 'b2': 0.999},
  }


def validate(config) -> None:
  """Raises ValueError('invalid config: ...') naming a bad optim / prior_optim field."""
  check = registry.check
  check(config.optim.implementation in IMPLEMENTATIONS,
        f'optim.implementation={config.optim.implementation!r}, expected one of '
        f'{IMPLEMENTATIONS}')
  check(config.optim.eps > 0, f'optim.eps={config.optim.eps} must be > 0')
  for key in ('b1', 'b2'):
    check(0 <= config.prior_optim[key] < 1,
          f'prior_optim.{key}={config.prior_optim[key]!r}, expected a number in [0, 1)')
