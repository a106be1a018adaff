r"""What the golden test's tolerant mode sees: rounding against real changes.

Runs the golden test's 20 PolyMNIST steps (tests/test_golden_polymnist.py) for each model under
the tests' XLA flags (the baseline) and under variants, each in a fresh process (XLA reads its
flags once), and compares every variant with the baseline in tolerant mode
(tests/golden_records.py). Two kinds of variant:

- machine-like: the same code and config, rounded differently (AVX-512 code, XLA's default
  optimisation, one core instead of two: another thread partition). The tolerant mode must pass
  them, by a wide margin;
- changes: one constant of the objective or of the EBM's sampler moved by a relative 1e-5 to
  1e-3. The tolerant mode should fail them.

  python benchmarks/golden_margins.py --out=/tmp/golden_margins.json
  python benchmarks/golden_margins.py --models=mvae,moe_ebm --variants=one_core,beta_4e-5

Prints, per variant, each model's margins (a check's value over its tolerance: above 1 fails)
and whether the bits differ from the baseline; --out keeps them as JSON. The PolyMNIST build
the tests use (M=5, seed 0, scikit-image backgrounds) is made under --data_dir if missing.
About 10-20 s a model and variant with a warm compilation cache, a few minutes cold.
"""

import importlib
import json
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tests' flags (tests/conftest.py), under which the golden record is made.
TESTS_XLA_FLAGS = ('--xla_backend_optimization_level=1 --xla_cpu_max_isa=AVX2 '
                   '--xla_gpu_deterministic_ops=true')
MODELS = ('mvae', 'mmjsd', 'mopoe', 'mmvae', 'mmvaeplus', 'ebm_mmvae', 'ebm_mmvaeplus', 'moe_ebm')
EBM_MODELS = ('ebm_mmvae', 'ebm_mmvaeplus', 'moe_ebm')
# name: (XLA_FLAGS, one core only, config overrides, models it applies to (None: all)).
VARIANTS = {
    'avx512': ('--xla_backend_optimization_level=1', False, {}, None),
    'xla_defaults': ('', False, {}, None),
    'one_core': (TESTS_XLA_FLAGS, True, {}, None),
    'beta_1e-5': (TESTS_XLA_FLAGS, False, {'model.beta': 2.5 * (1 + 1e-5)}, None),
    'beta_4e-5': (TESTS_XLA_FLAGS, False, {'model.beta': 2.5001}, None),
    'beta_1e-4': (TESTS_XLA_FLAGS, False, {'model.beta': 2.5 * (1 + 1e-4)}, None),
    'beta_1e-3': (TESTS_XLA_FLAGS, False, {'model.beta': 2.5 * (1 + 1e-3)}, None),
    'prior_step_1e-4': (TESTS_XLA_FLAGS, False, {'ebm.prior_step_size': 0.4 * (1 + 1e-4)},
                        EBM_MODELS),
    'prior_step_1e-3': (TESTS_XLA_FLAGS, False, {'ebm.prior_step_size': 0.4 * (1 + 1e-3)},
                        EBM_MODELS),
}

CHILD = r'''
import json, sys
import jax
jax.config.update('jax_default_matmul_precision', 'highest')  # As tests/conftest.py.
sys.path.insert(0, sys.argv[1])
import test_golden_polymnist
overrides = json.loads(sys.argv[4])
record = test_golden_polymnist.trajectory(sys.argv[2], sys.argv[3], **overrides)
with open(sys.argv[5], 'w') as f:
  json.dump(record, f)
'''


def run(model: str, xla_flags: str, one_core: bool, overrides: dict, data_dir: str) -> dict:
  env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS='cpu')
  env.setdefault('JAX_COMPILATION_CACHE_DIR',
                 os.path.expanduser('~/.cache/moe_ebm_jax/jax_compilation_cache'))
  with tempfile.NamedTemporaryFile(suffix='.json') as out:
    cmd = [sys.executable, '-c', CHILD, os.path.join(ROOT, 'tests'), data_dir, model,
           json.dumps(overrides), out.name]
    if one_core:
      cmd = ['taskset', '-c', str(min(os.sched_getaffinity(0)))] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if proc.returncode:
      raise SystemExit(f'{model} with {xla_flags!r}, {overrides} failed:\n{proc.stderr[-3000:]}')
    with open(out.name) as f:
      return json.load(f)


def build_data(data_dir: str) -> None:
  from moe_ebm_jax.data import polymnist  # pylint: disable=g-import-not-at-top
  builder = polymnist.builder(data_dir=data_dir)
  if not builder.is_prepared():
    print(f'Building PolyMNIST in {data_dir} (about a minute).', flush=True)
    builder.download_and_prepare()


def _golden_records():
  """tests/golden_records.py (the tests are not a package)."""
  if os.path.join(ROOT, 'tests') not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, 'tests'))
  return importlib.import_module('golden_records')


def main(argv):
  del argv
  golden_records = _golden_records()
  from moe_ebm_jax import log_setup  # pylint: disable=g-import-not-at-top
  log_setup.setup()  # Dependencies' INFO chatter off, as main.py does.
  unknown = sorted(set(FLAGS.variants) - set(VARIANTS)) + sorted(set(FLAGS.models) - set(MODELS))
  if unknown:
    raise SystemExit(f'Unknown variants or models: {unknown}')
  build_data(FLAGS.data_dir)
  models = FLAGS.models
  base = {m: run(m, TESTS_XLA_FLAGS, False, {}, FLAGS.data_dir) for m in models}
  machine = base[models[0]]['machine']  # The baseline's, under the tests' flags.
  print(f'Baseline: {golden_records.machine_name(machine)}, XLA_FLAGS={TESTS_XLA_FLAGS!r}. '
        'Margins: value / tolerance, above 1 fails the tolerant mode.')
  results = {'machine': machine, 'tolerances': {
      'loss_ulps': golden_records.LOSS_TOL_ULPS,
      **{s: f'{how} <= {tol / golden_records.EPS:g} EPS'
         for s, (how, tol) in golden_records.SUMMARIES.items()}}, 'variants': {}}
  for name in FLAGS.variants:
    xla_flags, one_core, overrides, only = VARIANTS[name]
    rows = {}
    print(f'\n{name}: XLA_FLAGS={xla_flags!r}{", one core" if one_core else ""}'
          f'{", " + str(overrides) if overrides else ""}')
    for model in models:
      if only and model not in only:
        continue
      got = run(model, xla_flags, one_core, overrides, FLAGS.data_dir)
      checks = golden_records.compare(got, base[model], 'tolerant')
      same = all(c.ok for c in golden_records.compare(got, base[model], 'exact'))
      rows[model] = {'margins': {c.name: round(c.margin, 4) for c in checks
                                 if c.margin is not None},
                     'tolerant': 'pass' if all(c.ok for c in checks) else 'fail',
                     'bits': 'same' if same else 'differ'}
      if len(rows) == 1:
        print(f'  {"model":14s}' + ''.join(f'{k:>11s}' for k in rows[model]['margins']))
      print(f'  {model:14s}' + ''.join(f'{v:11.3g}' for v in rows[model]['margins'].values()) +
            f'   bits {rows[model]["bits"]:6s} tolerant {rows[model]["tolerant"]}', flush=True)
    results['variants'][name] = {'xla_flags': xla_flags, 'one_core': one_core,
                                 'overrides': overrides, 'models': rows}
    if FLAGS.out:
      with open(FLAGS.out, 'w') as f:
        json.dump(results, f, indent=1)


if __name__ == '__main__':
  # Defined here, not on import: tests load VARIANTS beside suite.py, whose flags share names.
  flags.DEFINE_list('models', list(MODELS), 'Models to run.')
  flags.DEFINE_list('variants', list(VARIANTS), f'Variants, of {list(VARIANTS)}.')
  flags.DEFINE_string('data_dir', os.path.expanduser('~/.cache/moe_ebm_jax/golden_tfds'),
                      'PolyMNIST TFDS folder (built here if missing).')
  flags.DEFINE_string('out', None, 'Write the margins here as JSON.')
  app.run(main)
