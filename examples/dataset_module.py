r"""A dataset of your own for main.py: a module that registers it, named in the config argument.

Three modalities that share only a digit class: a 28x28 grey MNIST digit (Bernoulli), another
digit of the same class on a 32x32 colour canvas (Laplace), and the class as a label.

  python main.py --config=configs/cpu.py:mmvaeplus,examples/dataset_module.py:three_views \
      --workdir=/tmp/three_views                    # ~5 min on 2 CPU cores; then evaluated
"""

import numpy as np

from moe_ebm_jax import cache
from moe_ebm_jax.data import datasets, mnist
from moe_ebm_jax.vae import modalities

NUM_TRAIN, NUM_TEST = 12_000, 2_000


def partners(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """For each example, another example of the same class (the second view's digit)."""
  out = np.empty(len(labels), np.int64)
  for k in np.unique(labels):
    where = np.flatnonzero(labels == k)
    out[where] = rng.permutation(where)
  return out


def views(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
  other = x[partners(y, rng)]  # (N, 28, 28) uint8.
  hue = rng.uniform(0.2, 1.0, (len(y), 1, 1, 3))  # A random colour per example.
  canvas = np.zeros((len(y), 32, 32, 3), np.float32)
  canvas[:, 2:30, 2:30] = other[..., None] / 255 * hue
  return {'grey': x[..., None], 'colour': (canvas * 255).astype(np.uint8),
          'digit': y.astype(np.int32)}


@datasets.register('three_views')
def three_views(data_config):
  data = mnist.load_mnist(data_config.mnist, cache_dir=cache.root(data_config.data_dir, 'mnist'))  # Verified; cached once fetched.
  rng = np.random.default_rng(data_config.seed)
  train = views(data.x_train[:NUM_TRAIN], data.y_train[:NUM_TRAIN], rng)
  test = views(data.x_test[:NUM_TEST], data.y_test[:NUM_TEST], rng)
  specs = (modalities.image_spec('grey', (28, 28, 1), likelihood='bernoulli'),
           modalities.image_spec('colour', (32, 32, 3)),  # Laplace, MMVAE+'s.
           modalities.label_spec('digit', 10))
  return datasets.from_arrays('three_views', train, test, specs, train_labels=train['digit'],
                              test_labels=test['digit'], num_classes=10)
