r"""Compile time and step time of one training step under several XLA flag sets, each in a fresh
process (XLA reads its flags once): what chose the tests' flags (tests/conftest.py).

  python benchmarks/xla_flags.py                       # smoke MOE-EBM on PolyMNIST-shaped data
  python benchmarks/xla_flags.py --config=configs/smoke.py:mmvaeplus --steps=20

Random data of the dataset's shapes (a step's time does not depend on the values); no
compilation cache. Prints a Markdown table: flags, seconds to the first step (tracing, compiling
and one step), seconds per step after it (median of --steps).
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags

_CONFIG = flags.DEFINE_string('config', 'configs/smoke.py:moe_ebm', 'Config file and argument.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps after the first.')
_FLAG_SETS = flags.DEFINE_multi_string(
    'xla_flags', ['', '--xla_backend_optimization_level=0',
                  '--xla_backend_optimization_level=1', '--xla_backend_optimization_level=2',
                  '--xla_backend_optimization_level=1 --xla_cpu_max_isa=AVX2'],
    'XLA_FLAGS values, one run each (\'\' = XLA\'s defaults).')

CHILD = r'''
import json, sys, time
import jax, numpy as np
from moe_ebm_jax import config_lib, model_state, parallel, train
config = config_lib.from_file(*sys.argv[1].split(':', 1))
model = model_state.make_model(config)
steps = train.compile_steps(config, model, parallel.make_mesh(jax.devices()[:1]))
rng = np.random.default_rng(0)
x = {s.name: (rng.integers(0, s.num_classes, (config.batch_size,) + tuple(s.shape))
              if s.kind == 'categorical' else rng.random((config.batch_size,) + tuple(s.shape)))
              .astype(s.dtype) for s in model.vae.modalities}
start = time.perf_counter()
state = steps['init'](jax.random.PRNGKey(0))
batch = parallel.global_batch(x, steps['batch'])
state, _ = steps['train'](state, batch)
jax.block_until_ready(state)
first = time.perf_counter() - start
times = []
for _ in range(int(sys.argv[2])):
  t = time.perf_counter()
  state, _ = steps['train'](state, batch)
  jax.block_until_ready(state)
  times.append(time.perf_counter() - t)
print(json.dumps({'first_s': first, 'step_s': float(np.median(times))}))
'''


def main(argv):
  del argv
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path, _, arg = _CONFIG.value.partition(':')
  print(f'{_CONFIG.value}, {_STEPS.value} timed steps, no compilation cache\n')
  print('| XLA_FLAGS | to the first step (s) | per step (s) |\n|---|---|---|')
  for xla_flags in _FLAG_SETS.value:
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS='cpu',
               JAX_ENABLE_COMPILATION_CACHE='false')
    env.pop('JAX_COMPILATION_CACHE_DIR', None)
    proc = subprocess.run([sys.executable, '-c', CHILD, f'{os.path.join(root, path)}:{arg}',
                           str(_STEPS.value)], capture_output=True, text=True, env=env, cwd=root,
                          check=False)
    if proc.returncode:
      raise SystemExit(f'XLA_FLAGS={xla_flags!r} failed:\n{proc.stderr[-2000:]}')
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f'| `{xla_flags or "(defaults)"}` | {r["first_s"]:.1f} | {r["step_s"]:.3f} |', flush=True)


if __name__ == '__main__':
  app.run(main)
