"""MCMC samplers of latents as components: a sampler is one function and one registration.

A sampler has langevin.sample's signature,

  sampler(log_prob, init, key, *, num_steps, step_size, noise_scale, keep_trajectory, unroll)
      -> (final state like init, diagnostics)

with log_prob mapping a state (an array (B, ...) or a pytree of them) to per-example
log-densities (B,), and diagnostics holding at least per-step 'log_prob' and 'grad_norm'
(num_steps,) (batch means). Registered: 'langevin' (unadjusted, the paper's), 'mala'
(Metropolis-adjusted). `Chain` binds a sampler to its settings: the EBM's prior and posterior
chains are two Chains (config.ebm.sampler and the step counts and sizes).

  @samplers.register('my_sampler')
  def my_sampler(log_prob, init, key, *, num_steps, step_size, noise_scale=1.0,
                 keep_trajectory=False, unroll=1): ...
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from moe_ebm_jax import registry
from moe_ebm_jax.latent import langevin
from moe_ebm_jax.latent import mala

Sampler = Callable[..., tuple[Any, dict[str, Any]]]
SAMPLERS: registry.Registry = registry.Registry('sampler')


def register(name: str, *, validate: Callable[[Any], str | None] | None = None):
  """Decorator: registers `fn` as sampler `name` (config.ebm.sampler). Names are unique.
  validate: settings (noise_scale, ...) -> what is wrong with them for this sampler, or None."""
  return SAMPLERS.register(name, validate=validate)


def validate(name: str, section: str, settings) -> None:
  """Raises ValueError('invalid config: ...') if sampler `name` refuses `settings` (the config
  section `section` that holds them)."""
  check = SAMPLERS.validators.get(name)
  problem = check(settings) if check else None
  if problem:
    raise ValueError(f'invalid config: {section}.sampler={name!r}: {problem}')


def get(name: str) -> Sampler:
  return SAMPLERS.lookup(name)


register('langevin')(langevin.sample)
register('mala', validate=lambda s: None if s.noise_scale > 0 else (
    f'noise_scale={s.noise_scale!r}: MALA needs noise_scale > 0'))(mala.sample)


@dataclasses.dataclass(frozen=True)
class Chain:
  """A sampler with its settings; hashable, so jit treats it as static.

  chain(log_prob, init, key) runs it: see the module docstring.
  """
  num_steps: int
  step_size: float
  noise_scale: float = 1.0
  sampler: str = 'langevin'
  unroll: int | bool = 1  # lax.scan's unroll (True: the whole chain).

  def __call__(self, log_prob, init, key, *, keep_trajectory: bool = False):
    return get(self.sampler)(log_prob, init, key, num_steps=self.num_steps,
                             step_size=self.step_size, noise_scale=self.noise_scale,
                             keep_trajectory=keep_trajectory, unroll=self.unroll)
