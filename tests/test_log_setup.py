"""The command line's log: dependencies' INFO lines hidden, ours kept, a short prefix; and, run
for real, a smoke training's terminal holds no orbax line unless --debug_logs asks for them."""

import logging
import os
import subprocess
import sys

import orbax.checkpoint
import pytest

from moe_ebm_jax import log_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record(pathname, level, message='a message'):
  return logging.LogRecord('absl', level, pathname, 1, message, None, None)


def test_filter_hides_dependencies_info_and_keeps_ours_and_their_warnings():
  f = log_setup.DependencyInfoFilter()
  # Where the real packages live: the filter matches their files, not only invented paths.
  orbax_file = os.path.join(os.path.dirname(orbax.checkpoint.__file__), 'checkpoint_manager.py')
  jax_file = os.path.join(os.path.dirname(__import__('jax').__file__), '_src', 'xla_bridge.py')
  ours = os.path.join(ROOT, 'moe_ebm_jax', 'train.py')
  assert not f.filter(record(orbax_file, logging.INFO))
  assert not f.filter(record(jax_file, logging.INFO))
  assert not f.filter(record(orbax_file, logging.DEBUG))
  assert f.filter(record(orbax_file, logging.WARNING, 'disk full'))
  expected = 'Requested `tracked_metric`; did not provide metrics.'
  assert f.filter(record(orbax_file, logging.ERROR, expected))
  assert not f.filter(record(orbax_file, logging.WARNING, expected))
  tfds_file = os.path.join(os.sep, 'site-packages', 'tensorflow_datasets', 'core', 'file_utils.py')
  assert not f.filter(record(
      tfds_file, logging.WARNING, 'Variant folder /d/polymnist/m5/1.0.0 has no dataset_info.json'))
  assert f.filter(record(tfds_file, logging.WARNING, 'Variant folder /d has invalid version x'))
  assert not f.filter(record(tfds_file, logging.WARNING, "Using custom data configuration: "
                                "PolymnistConfig(name='m3_seed0_skimage', num_modalities=3)"))
  assert f.filter(record(tfds_file, logging.WARNING, 'Using custom data configuration: other'))
  assert f.filter(record(ours, logging.WARNING, expected))  # Ours always show.
  assert f.filter(record(ours, logging.INFO))
  assert f.filter(record(os.path.join(ROOT, 'main.py'), logging.INFO))
  # moe_ebm_jax contains 'jax' but is not the jax package.
  assert f.filter(record(os.path.join(os.sep, 'site-packages', 'moe_ebm_jax', 'x.py'),
                         logging.INFO))


def test_short_formatter_keeps_the_level_of_warnings():
  fmt = log_setup.ShortFormatter()
  info = fmt.format(record('/x.py', logging.INFO, 'step 5/20'))
  warning = fmt.format(record('/x.py', logging.WARNING, 'careful'))
  assert info.endswith(' step 5/20') and len(info.split(' ')[0]) == len('07:23:25')
  assert warning.endswith(' WARNING careful')


def run_smoke_training(polymnist_dir, workdir, *flags):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, 'main.py'), '--config=configs/smoke.py:mmvaeplus',
       f'--workdir={workdir}', f'--config.data.data_dir={polymnist_dir}',
       '--config.num_train_steps=4', '--config.log_every_steps=2',
       '--config.eval_every_steps=4', '--config.checkpoint_every_steps=2', *flags],
      capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)


@pytest.mark.slow
def test_smoke_training_terminal_has_no_orbax_info_unless_asked(polymnist_dir, tmp_path):
  quiet = run_smoke_training(polymnist_dir, tmp_path / 'quiet')
  assert quiet.returncode == 0, quiet.stderr[-3000:]
  log = quiet.stdout + quiet.stderr
  lines = log.splitlines()
  assert not [l for l in lines if 'orbax' in l.lower() or 'CheckpointManager' in l], log[-3000:]
  assert 'tracked_metric' not in log and 'libtpu' not in log
  assert sum('Compiled the training step' in l for l in lines) == 1
  progress = [l for l in lines if ' step ' in l and 'ETA' in l]
  assert [p.split(' | ')[0].split(' ', 1)[1] for p in progress] == ['step 2/4', 'step 4/4']
  assert 'Config:' not in log and 'mmvaeplus: mmvaeplus objective' in log
  # The same run with --debug_logs shows what was hidden: the filter is what hid it.
  loud = run_smoke_training(polymnist_dir, tmp_path / 'loud', '--debug_logs')
  assert loud.returncode == 0, loud.stderr[-3000:]
  assert 'CheckpointManager' in loud.stderr and 'Config:' in loud.stderr
