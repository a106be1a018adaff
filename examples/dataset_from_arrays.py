r"""A dataset of your own: arrays in memory, a spec per modality, the same trainer and evaluation.

Two views of points that share a class (one of 3): a 2-D position on one of three arcs, and a
noisy 12-D code of the class. Registered under a name, it is a config's data.name like any other.

  python examples/dataset_from_arrays.py   # ~1 minute on 2 CPU cores
"""

import json
import os
import tempfile

import numpy as np

from moe_ebm_jax import config_lib, train
from moe_ebm_jax.data import datasets
from moe_ebm_jax.vae import modalities


def views(num: int, rng: np.random.Generator, codebook: np.ndarray):
  label = rng.integers(0, 3, num)
  angle = label * 2 * np.pi / 3 + 0.4 * rng.normal(size=num)
  position = 3 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
  code = codebook[label] + 0.5 * rng.normal(size=(num, codebook.shape[1]))
  return {'position': position.astype(np.float32), 'code': code.astype(np.float32)}, label


@datasets.register('two_views')
def two_views(data_config):
  rng = np.random.default_rng(data_config.seed)
  codebook = rng.normal(size=(3, 12))
  (train_x, train_y), (test_x, test_y) = views(2000, rng, codebook), views(500, rng, codebook)
  specs = (modalities.vector_spec('position', 2), modalities.vector_spec('code', 12))
  return datasets.from_arrays('two_views', train_x, test_x, specs, train_labels=train_y,
                              test_labels=test_y, num_classes=3)


def main(num_steps: int = 300) -> dict:
  path = os.path.join(os.path.dirname(__file__), '..', 'configs', 'cpu.py')
  config = config_lib.from_file(path, 'mmvaeplus,two_views')  # CPU scale: model, dataset.
  config.num_train_steps, config.eval_every_steps = num_steps, num_steps
  workdir = tempfile.mkdtemp()
  config.data.data_dir = workdir  # Where the coherence classifiers are cached.
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
    coherence = json.load(f)['coherence']
  print(f"cross coherence {coherence['q']['cross_coherence']:.3f}, joint coherence "
        f"{coherence['joint_coherence']:.3f} (chance 0.333); figures in {workdir}/eval")
  return coherence


if __name__ == '__main__':
  main()
