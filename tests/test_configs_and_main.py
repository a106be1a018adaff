"""Configs load for every model and scale, bad values fail fast, and main.py's prepare mode."""

import importlib.util
import os
import subprocess
import sys

import pytest

from moe_ebm_jax import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ('polymnist', 'polymnist_cpu', 'smoke')


def load_config(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


@pytest.mark.parametrize('name', CONFIGS)
@pytest.mark.parametrize('model', config_lib.MODELS)
def test_every_config_and_model_validates(name, model):
  config = load_config(name, model)
  config_lib.validate(config)
  assert config.model.name == model


@pytest.mark.parametrize('name', ['synthetic_mixture', 'mnist_label'])
@pytest.mark.parametrize('model', config_lib.MODELS)
def test_every_dataset_config_and_model_validates(name, model):
  config = load_config(name, model)
  config_lib.validate(config)
  assert config.data.name == name and config.model.name == model
  assert config.eval.num_fid_samples == 0  # Not RGB images.


def test_dataset_config_variants_validate_and_bad_arguments_are_named():
  for model in config_lib.MODELS:
    config = load_config('mnist_label', f'{model},mlp')
    config_lib.validate(config)
    assert config.data.image_network == 'mlp' and config.model.name == model
    config = load_config('synthetic_mixture', f'{model},z3')
    config_lib.validate(config)
    assert config.model.latent_z == 3
    # PolyMNIST's long runs: the quick problem, longer, with every periodic checkpoint kept
    # (their coherence curve is read from them afterwards).
    quick = load_config('polymnist_cpu', f'{model},quick')
    config = load_config('polymnist_cpu', f'{model},long')
    config_lib.validate(config)
    assert config.data.num_modalities == quick.data.num_modalities == 3
    assert config.optim.learning_rate == quick.optim.learning_rate
    assert config.num_train_steps > quick.num_train_steps
    assert config.keep_checkpoints * config.checkpoint_every_steps > config.num_train_steps
    if config.model.prior == 'ebm':  # The paper's and Pang et al.'s EBM, persistent chains.
      assert (config.ebm.energy_weight, config.ebm.energy_l2) == ('one', 0.0)
      assert config.ebm.persistent_chains > 0
    else:  # Resumable runs of the models without an EBM keep the base's EBM keys.
      assert config.ebm.persistent_chains == 0
  for name, arg in (('mnist_label', 'moe_ebm,conv'), ('synthetic_mixture', 'moe_ebm,w2'),
                    ('polymnist_cpu', 'moe_ebm,quick,long')):
    with pytest.raises(ValueError, match=f'config argument {arg!r}'):
      load_config(name, arg)


def test_scale_eps_is_each_reference_families_eta():
  # MMVAE+'s code adds 1e-20, MMVAE's 1e-6, the Gaussian references (std = exp(logvar / 2)) 0.
  expected = {'mmvaeplus': 1e-20, 'mmvae': 1e-6, 'mvae': 0.0, 'mmjsd': 0.0, 'mopoe': 0.0}
  for model in config_lib.MODELS:
    config = config_lib.base_config(model)
    assert config.model.scale_eps == expected[config.model.objective], model
  config = config_lib.base_config('mopoe')
  config.model.scale_eps = -1e-6
  with pytest.raises(ValueError, match='scale_eps=-1e-06 must be >= 0'):
    config_lib.validate(config)


def test_default_model_and_scales():
  assert load_config('polymnist').model.name == config_lib.DEFAULT_MODEL
  paper, cpu, smoke = (load_config(n) for n in CONFIGS)
  assert paper.model.widths == (64, 128, 256) and paper.batch_size == 128
  assert paper.data.train_subset is None
  assert smoke.model.widths < cpu.model.widths < paper.model.widths
  assert smoke.data.train_subset <= 100


def test_training_ends_with_the_evaluation_except_at_smoke_scale():
  paper, cpu, smoke = (load_config(n) for n in CONFIGS)
  assert config_lib.base_config(None).eval.at_end_of_training is True
  assert paper.eval.at_end_of_training and cpu.eval.at_end_of_training
  assert paper.eval.num_fid_samples == 10_000
  assert smoke.eval.at_end_of_training is False  # Tests turn it on with injected stand-ins.


def test_unknown_model_is_rejected():
  with pytest.raises(ValueError, match="unknown model 'mmvae_plus'"):
    load_config('smoke', 'mmvae_plus')


@pytest.mark.parametrize('field, value, message', [
    ('data.num_modalities', 1, 'num_modalities=1'),
    ('batch_size', 0, 'batch_size=0'),
    ('data.train_subset', 4, 'smaller than one batch'),
    ('data.name', 'mnist', 'data.name'),
    ('model.widths', (8, 8), 'model.widths'),
    ('eval.num_fid_samples', 1, 'at least 2 samples'),
    ('eval.fid_batch_size', 0, 'fid_batch_size'),
    ('ebm.energy_l2', -0.1, 'energy_l2=-0.1'),
    ('model.conv_backward', 'fast', "conv_backward='fast'"),
    ('data.num_workers', -1, 'num_workers=-1 must be an integer >= 0'),
    ('data.num_threads', 0, 'num_threads=0 must be an integer >= 1'),
    ('eval.at_end_of_training', None, 'at_end_of_training=None must be True or False'),
    ('model.scale_eps', 0.0, 'must be > 0 for Laplace posteriors'),  # smoke: MOE-EBM, Laplace.
    ('ebm.sampler', 'hmc', "ebm.sampler='hmc' is not one of"),
])
def test_bad_values_fail_validation(field, value, message):
  config = load_config('smoke')
  section, _, key = field.rpartition('.')
  (config[section] if section else config)[key] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(config)


def run_main(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)


@pytest.mark.slow
def test_main_prepare_uses_the_built_dataset(polymnist_dir):
  proc = run_main('--config=configs/smoke.py:mmvaeplus', f'--config.data.data_dir={polymnist_dir}',
                  '--mode=prepare')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'is ready in' in proc.stderr and 'fingerprint' in proc.stderr


@pytest.mark.slow
def test_main_rejects_unknown_keys_and_bad_values(tmp_path):
  proc = run_main('--config=configs/smoke.py', '--config.data.bogus=1', '--mode=prepare')
  assert proc.returncode != 0 and 'bogus' in proc.stderr
  proc = run_main('--config=configs/smoke.py', '--config.data.num_modalities=1',
                  f'--config.data.data_dir={tmp_path}', '--mode=prepare')
  assert proc.returncode != 0 and 'num_modalities=1 must be' in proc.stderr
  assert not os.listdir(tmp_path)  # Failed before touching the data dir.


@pytest.mark.slow
def test_main_ends_a_diverged_run_with_its_message_not_a_traceback(polymnist_dir, tmp_path):
  # Every step's energy counts as an explosion: two bad steps in a row, no checkpoint yet.
  proc = run_main('--config=configs/smoke.py:moe_ebm', f'--config.data.data_dir={polymnist_dir}',
                  f'--workdir={tmp_path}', '--config.ebm.max_abs_energy=1e-12',
                  '--config.max_consecutive_bad_steps=2', '--config.on_divergence=stop')
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert 'Training stopped: Training diverged at step' in proc.stderr
  assert 'an energy exceeded config.ebm.max_abs_energy' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_apply_override_sets_literals_tuples_strings_and_refuses_unknown_keys():
  config = config_lib.base_config('moe_ebm')
  assert config_lib.apply_override(config, 'num_train_steps=7') == ('num_train_steps', '7')
  config_lib.apply_override(config, 'ebm.hidden=[8, 8]')
  config_lib.apply_override(config, 'ebm.energy_weight=one')
  config_lib.apply_override(config, 'model.conv_backward="matmul"')
  assert (config.num_train_steps, config.ebm.hidden) == (7, (8, 8))
  assert (config.ebm.energy_weight, config.model.conv_backward) == ('one', 'matmul')
  with pytest.raises(KeyError, match="no key 'model.conv_speed'"):
    config_lib.apply_override(config, 'model.conv_speed=1')
  with pytest.raises(KeyError, match="no key 'nothing.here'"):
    config_lib.apply_override(config, 'nothing.here=1')
  with pytest.raises(ValueError, match='expected key=value'):
    config_lib.apply_override(config, 'num_train_steps')
