"""The report's pictures: titled, labelled PNGs of joint samples, cross generation, the prior's
posterior refinement and chain, and scatter plots of 2-D vector modalities."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from moe_ebm_jax import figures as figures_lib
from moe_ebm_jax import generation
from moe_ebm_jax.evaluators import common
from moe_ebm_jax.generation import LdMode


class FigureWriter:
  """Writes the figures of one model into `out_dir`.

  Args:
    gen: the model's common.Generators.
    classify: decodes -> predicted classes (N, M), to colour the scatter plots' samples.
    model_name: for titles.
    out_dir: where the PNGs go (process 0 writes them; every process computes them).
  """

  def __init__(self, gen: common.Generators, classify, model_name: str, out_dir: str):
    self.gen = gen
    self.classify = classify
    self.model_name = model_name
    self.out_dir = out_dir

  def run(self, state, x, key: jax.Array, data=None) -> dict[str, str]:
    """Writes the pictures; returns {name: file name}. x: the first examples of the test split
    {name: (n, *shape)}, one row each; data: more of them with their labels ({name: (N, *shape)},
    (N,)) for the scatter plots. Every modality is shown in its own form (figures.tiles)."""
    os.makedirs(self.out_dir, exist_ok=True)
    model, prior, name = self.gen.model, self.gen.model.prior, self.model_name
    specs, names = model.vae.modalities, model.vae.names
    n = len(next(iter(x.values())))
    tests = [f'test {i + 1}' for i in range(n)]
    files = {}
    joint, trajectory = self.gen.joint_with_trajectory(n)(state, key)
    joint = jax.device_get(joint)
    size = figures_lib.tile_size(specs)  # One tile size for every modality, side by side.
    files['joint'] = self._save(
        'joint_samples.png', figures_lib.tiles(specs, joint, size),
        title=f'Joint samples of {name}: {prior.describe()}, each w_m ~ p(w)',
        col_labels=list(names), row_labels=[f'sample {i + 1}' for i in range(n)])
    x = jax.tree.map(jnp.asarray, x)
    first = self.gen.modes[0]  # q, or pre-LD for a prior that refines.
    for src, source in enumerate(names):
      mask = jnp.zeros((len(names),), bool).at[src].set(True)
      decodes, _, _ = self.gen.conditional[first](state, x, mask, jax.random.fold_in(key, src))
      tiles = np.concatenate([figures_lib.tiles(specs[src:src + 1], {source: x[source]}, size),
                              figures_lib.tiles(specs, jax.device_get(decodes), size)], axis=1)
      z_from = f'z ~ q(z | {source})' + (', pre-LD' if first is LdMode.PRE_LD else '')
      files[f'cross_from_{source}'] = self._save(
          f'cross_from_{source}.png', tiles,
          title=f'Cross generation from {source} ({name}; {z_from}, w ~ p(w))',
          col_labels=[f'source {source}'] + list(names), row_labels=tests)
    if LdMode.POST_LD in self.gen.modes:
      files['pre_post_ld'] = self._pre_post(state, x, key, size, tests)
    if trajectory is not None:  # The prior has a chain.
      files['prior_trajectory'] = self._trajectory(state, trajectory)
    files.update(self._scatter_plots(state, x, key, data))
    return files

  def _pre_post(self, state, x, key, size: int, tests) -> str:
    """From the first modality: its pre-LD and post-LD decodes side by side."""
    model = self.gen.model
    specs, names = model.vae.modalities, model.vae.names
    mask = jnp.zeros((len(names),), bool).at[0].set(True)
    k = jax.random.fold_in(key, 99)
    pre, _, _ = self.gen.conditional[LdMode.PRE_LD](state, x, mask, k)
    post, _, _ = self.gen.conditional[LdMode.POST_LD](state, x, mask, k)
    rows = np.concatenate([figures_lib.tiles(specs[:1], {names[0]: x[names[0]]}, size),
                           figures_lib.tiles(specs, jax.device_get(pre), size),
                           figures_lib.tiles(specs, jax.device_get(post), size)], axis=1)
    # 'pre m0' rather than 'pre-LD m0': a label must fit one 56-px column.
    return self._save(
        f'pre_vs_post_ld_from_{names[0]}.png', rows,
        title=f'From {names[0]} ({self.model_name}): pre-LD decodes (z ~ q) vs post-LD decodes '
              f'(z after {model.prior.describe_refinement()})',
        col_labels=([f'source {names[0]}'] + [f'pre {d}' for d in names] +
                    [f'post {d}' for d in names]),
        row_labels=tests)

  def _trajectory(self, state, trajectory) -> str:
    """Decodes of modality 0 along the prior chain: rows are chains, columns chain steps."""
    model = self.gen.model
    vae = model.vae
    steps = trajectory.shape[0]
    picks = np.unique(np.linspace(0, steps - 1, num=min(steps, 8)).round().astype(int))
    z = trajectory[picks][:, :4]  # (T, chains, Dz)
    t, chains = z.shape[:2]
    w = jnp.zeros((vae.num_modalities, t * chains, vae.latent_w))  # The median of p(w).
    decodes = generation.decode_shared(model, state.vae_params, w,
                                       jnp.reshape(z, (t * chains, -1)))
    spec = vae.modalities[0]
    first = jax.device_get(decodes[spec.name])
    tiles = figures_lib.tiles((spec,), {spec.name: first})[:, 0]  # (T * chains, H, W, 3)
    tiles = tiles.reshape((t, chains) + tiles.shape[1:]).transpose(1, 0, 2, 3, 4)
    # trajectory[i] is the state after step i + 1 (langevin.sample).
    return self._save(
        'prior_langevin_trajectory.png', tiles,
        title=f'Prior Langevin chains of {self.model_name}: {spec.name} decoded from z '
              'along the chain, w at the median of p(w)',
        col_labels=[f'step {i + 1}' for i in picks],
        row_labels=[f'chain {c + 1}' for c in range(tiles.shape[0])])

  def _scatter_plots(self, state, x, key, data) -> dict[str, str]:
    """Test data against joint samples for every 2-D vector modality."""
    model = self.gen.model
    specs = model.vae.modalities
    planar = [d for d, spec in enumerate(specs) if spec.kind == 'vector' and spec.shape == (2,)]
    if not planar:
      return {}
    # One set of joint samples, classified once, for every scatter plot.
    many = jax.device_get(self.gen.joint(state, jax.random.fold_in(key, 7))[0])
    read = np.asarray(self.classify(many))
    points, labels = (x, None) if data is None else data
    files = {}
    for d in planar:
      spec = specs[d]
      samples, classes = np.asarray(many[spec.name]), read[:, d]
      files[f'scatter_{spec.name}'] = self._save_image(
          f'scatter_{spec.name}.png', figures_lib.scatter_panels(
              [('test data, coloured by label', np.asarray(points[spec.name]), labels),
               ('joint samples, coloured by the class read', samples, classes)],
              title=f'{spec.name} of {self.model_name}: test data vs joint samples '
                    f'({model.prior.describe()})'))
    return files

  def _save_image(self, name: str, image: np.ndarray) -> str:
    """Writes a finished picture (H, W, 3) uint8 (process 0 only, as `_save`)."""
    if jax.process_index() == 0:
      figures_lib.save_png(os.path.join(self.out_dir, name), image)
    return name

  def _save(self, name: str, tiles: np.ndarray, **labels) -> str:
    """Writes tiles (rows, cols, S, S, 3) as figures.labelled_grid(tiles, **labels).

    Every process computes the tiles (the generation is compiled over every device); process 0
    alone writes them, so that processes sharing a workdir never write one file at once.
    """
    return self._save_image(name, figures_lib.labelled_grid(tiles, **labels))
