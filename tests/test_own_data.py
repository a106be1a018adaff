"""A researcher's own data, end to end: a module that registers a dataset of heterogeneous
modalities (images of two sizes, a label, a vector) trained and evaluated through main.py; every
bad input refused in one line before any work; the pieces that made it fail before (a reserved
name, tiles of two sizes, a weak coherence classifier, a builder run many times, silent scripts).
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from moe_ebm_jax import config_lib
from moe_ebm_jax import figures
from moe_ebm_jax import workdir as workdir_lib
from moe_ebm_jax.data import datasets
from moe_ebm_jax.evaluators import report as report_lib
from moe_ebm_jax.vae import modalities as mods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A module of one's own: four modalities that share a class (one of 4), of four kinds and two
# image sizes. BREAK (a module global) plants a bad input for the error tests.
MODULE = textwrap.dedent('''
    import numpy as np
    from moe_ebm_jax.data import datasets
    from moe_ebm_jax.vae import modalities

    BREAK = {brk!r}

    def views(n, rng):
      y = rng.integers(0, 4, n)
      small = rng.random((n, 28, 28, 1)) * 0.2
      big = rng.random((n, 32, 32, 3)) * 0.2
      for k in range(4):  # The class lights one quadrant of each image.
        r, c = divmod(k, 2)
        small[y == k, 14 * r:14 * r + 14, 14 * c:14 * c + 14] += 0.8
        big[y == k, 16 * r:16 * r + 16, 16 * c:16 * c + 16] += 0.8
      codebook = np.random.default_rng(7).normal(size=(4, 8))  # The same in both splits.
      code = np.eye(4)[y] @ codebook * 2 + rng.normal(size=(n, 8)) * 0.3
      x = {{'small': small.astype(np.float32), 'big': big.astype(np.float32),
           'digit': y.astype(np.int32), 'code': code.astype(np.float32)}}
      if BREAK == 'nan':
        x['big'][[3, 7]] = np.nan
      if BREAK == 'masked':
        x['code'] = np.ma.masked_less(x['code'], -3)
      return x, y

    @datasets.register('hetero')
    def hetero(data_config):
      rng = np.random.default_rng(data_config.seed)
      (train, ytr), (test, yte) = views(256, rng), views(64, rng)
      specs = (modalities.image_spec('small', (28, 28, 1), likelihood='bernoulli'),
               modalities.image_spec('big', (32, 32, 3)),
               modalities.label_spec('label' if BREAK == 'label' else 'digit', 4),
               modalities.vector_spec('code', 8))
      if BREAK == 'label':
        train['label'], test['label'] = train.pop('digit'), test.pop('digit')
      return datasets.from_arrays('hetero', train, test, specs, train_labels=ytr,
                                  test_labels=yte, num_classes=4)
''')


def write_module(folder, brk=None) -> str:
  path = os.path.join(folder, f'hetero_{brk or "ok"}.py')
  with open(path, 'w') as f:
    f.write(MODULE.format(brk=brk))
  return path


def run_main(*args, cwd=ROOT):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args],
                        capture_output=True, text=True, cwd=cwd, timeout=900, check=False)


# ----------------------------------------------------------------------------- bad inputs


def test_a_modality_named_label_is_refused_naming_what_to_do():
  with pytest.raises(mods.DataError, match=r"^modality 'label': name 'label' is reserved.*"
                                           r"e\.g\. 'digit'"):
    mods.check_specs([mods.label_spec('label', 3), mods.vector_spec('v', 2)])


def test_non_finite_and_masked_data_are_refused_with_modality_and_count():
  spec = mods.image_spec('big', (4, 4, 3))
  x = np.zeros((10, 4, 4, 3), np.float32)
  x[[2, 5, 6], 1, 1, 0] = [np.nan, np.inf, -np.inf]
  with pytest.raises(mods.DataError, match=r"^modality 'big': 3 of 10 examples of the train "
                                           r"data hold NaN or infinite values \(the first at "
                                           r"index 2\)"):
    mods.check_data(spec, x, 'train data')
  masked = np.ma.masked_equal(np.zeros((5, 2), np.float32), 0.0)
  with pytest.raises(mods.DataError, match=r"^modality 'v': the data is a masked array"):
    mods.check_data(mods.vector_spec('v', 2), masked)
  mods.check_data(spec, np.zeros((10, 4, 4, 3), np.uint8))  # uint8 images: nothing to check.


def test_a_dataset_builder_runs_once_per_process_and_its_module_once(tmp_path):
  calls = []
  specs = (mods.vector_spec('a', 2), mods.vector_spec('b', 3))
  arrays = {'a': np.zeros((8, 2), np.float32), 'b': np.zeros((8, 3), np.float32)}

  @datasets.register('counted_views')
  def counted(data_config):
    calls.append(data_config.seed)
    return datasets.from_arrays('c', arrays, arrays, specs)

  config = config_lib.base_config('mmvaeplus', 'counted_views')
  config.eval.at_end_of_training = False
  config.data.test_subset, config.data.num_threads = 8, 1  # The pipeline's: no new build.
  config_lib.validate(config)
  datasets.get(config.data)
  assert calls == [0]  # base_config, validate and get: one build.
  config.data.seed = 1
  datasets.get(config.data)
  assert calls == [0, 1]  # Another config.data, another build.
  path = write_module(str(tmp_path))
  config = config_lib.base_config('mmvaeplus', f'{path}:hetero')
  assert config.data.module == path and config.data.num_modalities == 4
  datasets.import_module(path)  # Imported already: not again (it would register twice).
  with pytest.raises(mods.DataError, match="config.data.module='nowhere.py': no such file"):
    datasets.import_module('nowhere.py')
  with pytest.raises(mods.DataError, match="config.data.module='no_such_mod': no such module"):
    datasets.import_module('no_such_mod')


@pytest.mark.slow
@pytest.mark.parametrize('brk,message', [
    ('nan', r"Data error in dataset 'hetero': modality 'big': 2 of 256 examples of the train "
            r"data hold NaN or infinite values \(the first at index 3\)"),
    ('masked', r"Data error in dataset 'hetero': modality 'code': \d+ rows of the train data "
               r"are partly masked"),
    ('label', r"Data error in dataset 'hetero': modality 'label': name 'label' is reserved"),
])
def test_main_reports_a_data_error_in_one_line_before_any_work(tmp_path, brk, message):
  path = write_module(str(tmp_path), brk)
  workdir = tmp_path / 'run'
  proc = run_main(f'--config=configs/smoke.py:mmvaeplus,{path}:hetero', f'--workdir={workdir}')
  assert proc.returncode == 1, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert re.match(message, last), last
  assert 'Traceback' not in proc.stderr and 'Flags parsing error' not in proc.stderr
  assert not workdir.exists()  # Nothing written: it failed before any work.


# ----------------------------------------------------------------------------- pieces


def test_tiles_of_images_of_two_sizes_share_one_size():
  specs = (mods.image_spec('small', (28, 28, 1)), mods.image_spec('big', (32, 32, 3)),
           mods.label_spec('digit', 4))
  values = {'small': np.ones((2, 28, 28, 1)), 'big': np.zeros((2, 32, 32, 3)),
            'digit': np.array([1, 3])}
  size = figures.tile_size(specs)
  assert size == 32
  one = figures.tiles(specs[:1], values, size)
  every = figures.tiles(specs, values, size)
  assert one.shape == (2, 1, 32, 32, 3) and every.shape == (2, 3, 32, 32, 3)
  np.concatenate([one, every], axis=1)  # What the report's cross-generation rows do.
  assert figures.tiles(specs[:1], values).shape[2] == 28  # Alone: its own size.


def test_the_report_names_modalities_and_flags_weak_classifiers_and_a_stop(tmp_path):
  from moe_ebm_jax.data import coherence_scorers  # pylint: disable=g-import-not-at-top
  info = {'readings': {'small': {'classifier': 'MLP', 'test_accuracy': 0.97},
                       'big': {'classifier': 'MLP', 'test_accuracy': 0.836},
                       'digit': 'its decoded class (argmax)'}}
  weak = coherence_scorers.weak_readers(info, ['small', 'big', 'digit'], 0.9)
  assert weak == {'big': 0.836}
  assert coherence_scorers.weak_readers({'accuracies': [0.99, 0.5]}, ['m0', 'm1'], 0.9) == {
      'm1': 0.5}
  matrix = [[0, 0.5, 0.25], [0.75, 0, 0.5], [0.5, 0.25, 0]]
  metrics = {'model': 'mmvaeplus', 'step': 7, 'modalities': ['small', 'big', 'digit'],
             'coherence': {'num_test_examples': 10, 'num_joint_samples': 5, 'joint_coherence': 0.2,
                           'q': {'cross_coherence': 0.4, 'cross_coherence_matrix': matrix,
                                 'subset_coherence': {'1': 0.4, '2': 0.5}}},
             'classifiers': info, 'weak_scorers': {'threshold': 0.9, 'accuracies': weak},
             'failed': 'figures: ValueError: boom', 'complete': False, 'eval_seconds': 1.0}
  report_lib.write_report(str(tmp_path), metrics, {})
  report = (tmp_path / 'report.md').read_text()
  assert '| source | small | big | digit |' in report and '| big | 0.750 | - | 0.500 |' in report
  assert '**Coherence read through weak classifiers**: big (test accuracy 0.836)' in report
  assert '**This evaluation stopped part way** (figures: ValueError: boom)' in report
  assert json.loads((tmp_path / 'metrics.json').read_text())['complete'] is False
  os.makedirs(tmp_path / 'run' / 'eval')
  workdir_lib.write_metrics(str(tmp_path / 'run' / 'eval'), metrics)
  assert workdir_lib.evaluated_step(str(tmp_path / 'run')) is None  # Part way: evaluate again.
  workdir_lib.write_metrics(str(tmp_path / 'run' / 'eval'), {**metrics, 'complete': True})
  assert workdir_lib.evaluated_step(str(tmp_path / 'run')) == 7


def test_a_coherence_reader_of_ones_own_is_registered_by_name():
  spec = mods.image_spec('big', (32, 32, 3), coherence='big_cnn_test')
  with pytest.raises(mods.DataError, match="coherence 'big_cnn_test' is not one of"):
    mods.check_spec(spec)
  mods.register_coherence('big_cnn_test')(
      lambda config, spec, dataset: (lambda v: np.zeros(len(v), np.int32),
                                     {'classifier': 'a CNN', 'test_accuracy': 0.99}))
  mods.check_spec(spec)
  with pytest.raises(ValueError, match="'label' is built in"):
    mods.register_coherence('label')


def test_a_script_sees_the_library_s_progress_lines():
  script = ('from absl import logging\nfrom moe_ebm_jax import log_setup\n'
            'logging.info("before")\nlog_setup.ensure_visible()\nlogging.info("after")\n')
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        cwd=ROOT, timeout=120, check=True)
  assert 'after' in proc.stderr and 'before' not in proc.stderr
  assert 'Logging before flag parsing' not in proc.stderr


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.parametrize('model', ['mmvaeplus', 'moe_ebm'])
def test_heterogeneous_modalities_train_and_evaluate_through_main(tmp_path, model):
  path = write_module(str(tmp_path))
  workdir = tmp_path / 'run'
  proc = run_main(f'--config=configs/smoke.py:{model},{path}:hetero', f'--workdir={workdir}',
                  '--config.num_train_steps=6', '--config.eval.at_end_of_training=True',
                  f'--config.data.data_dir={tmp_path / "data"}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Compiling the training step' in proc.stderr and 'Initialising the parameters' in proc.stderr
  out = workdir / 'eval'
  metrics = json.loads((out / 'metrics.json').read_text())
  assert metrics['complete'] and metrics['modalities'] == ['small', 'big', 'digit', 'code']
  tag = 'post_ld' if model == 'moe_ebm' else 'q'
  assert 0 <= metrics['coherence'][tag]['cross_coherence'] <= 1
  readings = metrics['classifiers']['readings']
  assert readings['digit'] == 'its decoded class (argmax)'
  for name in ('small', 'big', 'code'):  # MLP classifiers, trained on the quadrant classes.
    assert readings[name]['test_accuracy'] > 0.9, readings
  files = set(os.listdir(out))
  assert {'report.md', 'joint_samples.png'} | {f'cross_from_{n}.png' for n in
                                               metrics['modalities']} <= files
  report = (out / 'report.md').read_text()
  assert '| source | small | big | digit | code |' in report


UNCHECKED = textwrap.dedent('''
    import numpy as np
    from moe_ebm_jax.data import datasets
    from moe_ebm_jax.vae import modalities

    class Source:  # A source of one's own: only its first example is checked before training.
      def __len__(self):
        return 64
      def __getitem__(self, i):
        v = np.full(4, np.nan if i else 0.5, np.float32)
        return {'a': v, 'b': v, 'label': i % 2}

    @datasets.register('unchecked')
    def unchecked(data_config):
      specs = (modalities.vector_spec('a', 4), modalities.vector_spec('b', 4))
      return datasets.Dataset('unchecked', specs, lambda split: Source(), num_classes=2)
''')


@pytest.mark.slow
def test_a_run_whose_steps_mostly_fail_points_at_the_data(tmp_path):
  path = tmp_path / 'unchecked.py'
  path.write_text(UNCHECKED)
  proc = run_main(f'--config=configs/smoke.py:mmvaeplus,{path}:unchecked',
                  f'--workdir={tmp_path / "run"}', '--config.num_train_steps=4')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert ('4 of the 4 steps were skipped (the VAE loss or its gradients were non-finite). '
          'Check the data for non-finite values first') in proc.stderr, proc.stderr[-2000:]
