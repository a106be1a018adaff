r"""Incomplete data of your own: rows you declare missing, trained on with masks ('masked') and,
for comparison, on the complete rows only ('dropped').

Two views of points that share a class (one of 3): a 2-D position, and a 12-D code that 70% of
the training examples lack (None rows). The test set is complete.

  python examples/incomplete_data.py   # ~2 minutes on 2 CPU cores
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
  position = 3 * np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)
  code = (codebook[label] + 0.5 * rng.normal(size=(num, 12))).astype(np.float32)
  return {'position': position, 'code': code}, label


@datasets.register('two_views_with_gaps')
def two_views_with_gaps(data_config):
  rng = np.random.default_rng(data_config.seed)
  codebook = rng.normal(size=(3, 12))
  (train_x, train_y), (test_x, test_y) = views(2000, rng, codebook), views(500, rng, codebook)
  # Declared missing: None in place of a row (a mask, train_observed=, works the same).
  train_x['code'] = [None if gone else row for gone, row in
                     zip(rng.random(2000) < 0.7, train_x['code'])]
  specs = (modalities.vector_spec('position', 2), modalities.vector_spec('code', 12))
  return datasets.from_arrays('two_views_with_gaps', train_x, test_x, specs,
                              train_labels=train_y, test_labels=test_y, num_classes=3)


def run(policy: str, num_steps: int = 300) -> float:
  path = os.path.join(os.path.dirname(__file__), '..', 'configs', 'cpu.py')
  config = config_lib.from_file(path, 'mmvaeplus,two_views_with_gaps')
  config.num_train_steps, config.eval_every_steps = num_steps, num_steps
  config.data.incomplete_examples = policy
  workdir = tempfile.mkdtemp()
  config.data.data_dir = workdir  # Where the coherence classifiers are cached.
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
    return json.load(f)['coherence']['q']['cross_coherence']


if __name__ == '__main__':
  scores = {policy: run(policy) for policy in ('masked', 'dropped')}
  print(f"cross coherence: masked (every example) {scores['masked']:.3f}, dropped (complete "
        f"examples only) {scores['dropped']:.3f} (chance 0.333)")
