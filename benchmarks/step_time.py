r"""Median seconds per training step of one model, after warm-up, on synthetic batches.

  python benchmarks/step_time.py --config=configs/polymnist.py:mmvaeplus --batch_size=128 --steps=3

Prints compile time, each step's time and one JSON line with the summary. The step is the one
`train.py` runs (jitted, data parallel over all devices); the data are random images, so the
input pipeline is not part of the figure.
"""

import functools
import json
import statistics
import time

import jax
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from moe_ebm_jax import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file with model argument.')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps after the first (compiling) one.')


def main(argv):
  del argv
  config = _CONFIG.value
  config.batch_size = _BATCH.value
  model = train.make_model(config)
  steps = train.compile_steps(config, model, train.make_mesh())
  state = steps['init'](jax.random.PRNGKey(0))
  images = np.random.default_rng(0).random(
      (config.batch_size, config.data.num_modalities, 28, 28, 3), np.float32)
  batch = jax.device_put(images, steps['batch'])
  start = time.perf_counter()
  state, metrics = steps['train'](state, batch)
  jax.block_until_ready(metrics)
  compile_and_first = time.perf_counter() - start
  times = []
  for i in range(_STEPS.value):
    start = time.perf_counter()
    state, metrics = steps['train'](state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
    print(f'step {i + 1}: {times[-1]:.3f} s', flush=True)
  result = {'model': config.model.name, 'widths': list(config.model.widths),
            'batch_size': config.batch_size, 'devices': jax.device_count(),
            'backend': jax.default_backend(), 'compile_and_first_step_s': compile_and_first,
            'median_step_s': statistics.median(times), 'min_step_s': min(times),
            'max_step_s': max(times), 'examples_per_s': config.batch_size / statistics.median(times)}
  print(json.dumps(result))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
