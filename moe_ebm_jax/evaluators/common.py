"""The generation functions every evaluator is handed: built and compiled once per model."""

from __future__ import annotations

import functools

import jax
import numpy as np

from moe_ebm_jax import generation
from moe_ebm_jax.generation import LdMode
from moe_ebm_jax.data import missing


class Generators:
  """Jitted joint and conditional generation of one model (model_state.Model).

  joint(state, key) -> ({name: (N, *shape)}, trajectory or None), N = batch_size;
  conditional[mode](state, x, subset (M,) bool, key) -> (decodes, z, trajectory), per LdMode in
  `modes` (the prior says whether it refines: (Q,) or (PRE_LD, POST_LD)). Images are clipped to
  [0, 1]; the coherence_* versions clip only with `clip_for_coherence` (the MMVAE+ reference
  classifies the decoders' raw means).
  """

  def __init__(self, model, batch_size: int, clip_for_coherence: bool = False):
    self.model = model
    self.modes: tuple[LdMode, ...] = LdMode.of(model.prior)
    self.joint = self._joint(batch_size, clip=True)
    self.conditional = self._conditional(clip=True)
    specs = model.vae.modalities
    if clip_for_coherence or not any(s.kind == 'image' for s in specs):  # Compile once.
      self.coherence_joint, self.coherence_conditional = self.joint, self.conditional
    else:
      self.coherence_joint = self._joint(batch_size, clip=False)
      self.coherence_conditional = self._conditional(clip=False)

  def _joint(self, num_samples: int, clip: bool, keep_trajectory: bool = False):
    return jax.jit(functools.partial(generation.joint_generate, model=self.model,
                                     num_samples=num_samples, clip=clip,
                                     keep_trajectory=keep_trajectory))

  def _conditional(self, clip: bool):
    return {mode: jax.jit(functools.partial(generation.conditional_generate, model=self.model,
                                            post_ld=mode.post_ld, clip=clip))
            for mode in self.modes}

  def joint_with_trajectory(self, num_samples: int):
    """joint(state, key) of `num_samples` samples, with the prior chain's trajectory (compiled
    on first use: figures only)."""
    return self._joint(num_samples, clip=True, keep_trajectory=True)

  def stack(self, decodes) -> np.ndarray:
    """Decodes of image modalities of one shape {name: (N, H, W, C)} -> (N, M, H, W, C)."""
    return np.asarray(generation.stack_images(decodes, self.model.vae.names))


def batch_images(batch, names) -> np.ndarray:
  """A batch's image modalities stacked: (B, M, H, W, C) in the order of `names`; of incomplete
  test data (a batch with 'observed'), only the examples that have every modality."""
  images = np.stack([np.asarray(batch['x'][n]) for n in names], axis=1)
  if 'observed' not in batch:
    return images
  return images[missing.batch_observed(batch, names).all(axis=0)]
