r"""A new researcher's own data through main.py, replayed: the good runs, then every bad input.

The dataset of examples/dataset_module.py (a 28x28 grey digit, Bernoulli; another digit of the
class on a 32x32 colour canvas, Laplace; the class as a label), trained with MMVAE+ and MOE-EBM
at configs/cpu.py's scale for --steps steps and evaluated (coherence, figures); then a module
of arrays of the same shapes and kinds with one fault planted at a time, each through main.py,
its last line kept. Writes <out>/replay.json and prints a summary.

  python experiments/own_data_replay.py --out=/tmp/replay --steps=400
  python experiments/own_data_replay.py --out=/tmp/replay --models= --mnist=/path/mnist.npz
"""

import json
import os
import subprocess
import sys
import textwrap
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_OUT = flags.DEFINE_string('out', None, 'Folder for the runs, the fault modules and replay.json.')
_STEPS = flags.DEFINE_integer('steps', 400, 'Training steps of each good run.')
_MODELS = flags.DEFINE_list('models', ['mmvaeplus', 'moe_ebm'], 'Models of the good runs.')
_MNIST = flags.DEFINE_string('mnist', None, 'MNIST .npz (None: the library finds it).')

# Arrays of examples/dataset_module.py's shapes and kinds; FAULT plants one bad input.
FAULTY = textwrap.dedent('''
    import numpy as np
    from moe_ebm_jax.data import datasets
    from moe_ebm_jax.vae import modalities
    FAULT = {fault!r}

    def arrays(n, rng):
      y = rng.integers(0, 10, n)
      x = {{'grey': rng.random((n, 28, 28, 1)).astype(np.float32),
           'colour': rng.random((n, 32, 32, 3)).astype(np.float32), 'digit': y.astype(np.int32)}}
      if FAULT == 'nan':
        x['colour'][::50] = np.nan
      if FAULT == 'masked':
        x['grey'] = np.ma.masked_greater(x['grey'], 0.99)
      if FAULT == 'label_out_of_range':
        x['digit'][0] = 10
      if FAULT == 'wrong_image_size':
        x['colour'] = x['colour'][:, :31, :31]
      if FAULT == 'different_lengths':
        x['grey'] = x['grey'][:-1]
      return x, y

    @datasets.register('faulty')
    def faulty(data_config):
      rng = np.random.default_rng(0)
      (train, ytr), (test, yte) = arrays(500, rng), arrays(100, rng)
      if FAULT == 'missing_test_modality':
        del test['colour']
      name = 'label' if FAULT == 'label_named_label' else 'digit'
      colour = (31, 31, 3) if FAULT == 'odd_resnet_spec' else (32, 32, 3)
      specs = (modalities.image_spec('grey', (28, 28, 1), likelihood='bernoulli'),
               modalities.image_spec('colour', colour,
                                     encoder='nope' if FAULT == 'unknown_encoder' else 'resnet'),
               modalities.label_spec(name, 10))
      if name == 'label':
        train['label'], test['label'] = train.pop('digit'), test.pop('digit')
      return datasets.from_arrays('faulty', train, test, specs, train_labels=ytr,
                                  test_labels=yte, num_classes=10)
''')
FAULTS = ('label_named_label', 'nan', 'masked', 'label_out_of_range', 'wrong_image_size',
          'odd_resnet_spec', 'missing_test_modality', 'different_lengths', 'unknown_encoder')


def main_py(*args):
  start = time.time()
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args],
                        capture_output=True, text=True, cwd=ROOT, check=False)
  return proc, time.time() - start


def main(argv):
  del argv
  out = os.path.abspath(_OUT.value)
  os.makedirs(out, exist_ok=True)
  record = {'steps': _STEPS.value, 'runs': {}, 'faults': {}}
  mnist = [f'--config.data.mnist={_MNIST.value}'] if _MNIST.value else []
  for model in _MODELS.value:
    workdir = os.path.join(out, model)
    proc, seconds = main_py(
        f'--config=configs/cpu.py:{model},examples/dataset_module.py:three_views',
        f'--workdir={workdir}', f'--config.num_train_steps={_STEPS.value}',
        f'--config.data.data_dir={os.path.join(out, "data")}', *mnist)
    with open(os.path.join(workdir, 'main.log'), 'w') as f:
      f.write(proc.stderr)
    if proc.returncode:
      raise SystemExit(f'{model} failed:\n{proc.stderr[-3000:]}')
    with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
      metrics = json.load(f)
    c = metrics['coherence']
    tag = 'post_ld' if 'post_ld' in c else ('pre_ld' if 'pre_ld' in c else 'q')
    lines = proc.stderr.splitlines()
    record['runs'][model] = {
        'seconds': round(seconds, 1), 'joint_coherence': c['joint_coherence'],
        f'cross_coherence_{tag}': c[tag]['cross_coherence'],
        'cross_coherence_matrix': c[tag]['cross_coherence_matrix'],
        'classifiers': metrics['classifiers'], 'figures': sorted(
            f for f in os.listdir(os.path.join(workdir, 'eval')) if f.endswith('.png')),
        'startup_lines': [l for l in lines if 'Compiled' in l or 'Initialised' in l or
                          'Dataset three_views ready' in l]}
    print(f'{model}: {seconds / 60:.1f} min, joint coherence {c["joint_coherence"]:.3f}, cross '
          f'coherence ({tag}) {c[tag]["cross_coherence"]:.3f}', flush=True)
  for fault in FAULTS:
    path = os.path.join(out, f'faulty_{fault}.py')
    with open(path, 'w') as f:
      f.write(FAULTY.format(fault=fault))
    proc, seconds = main_py(f'--config=configs/cpu.py:mmvaeplus,{path}:faulty',
                            f'--workdir={os.path.join(out, "fault_" + fault)}')
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''
    record['faults'][fault] = {'returncode': proc.returncode, 'seconds': round(seconds, 1),
                               'message': last, 'traceback': 'Traceback' in proc.stderr}
    print(f'{fault}: exit {proc.returncode} in {seconds:.0f} s: {last}', flush=True)
  with open(os.path.join(out, 'replay.json'), 'w') as f:
    json.dump(record, f, indent=1)


if __name__ == '__main__':
  flags.mark_flag_as_required('out')
  app.run(main)
