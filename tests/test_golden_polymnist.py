"""PolyMNIST training is unchanged by refactors.

For each of the 8 models at smoke scale, its first 20 training steps (parameters at
initialisation, the first step's gradients, every step's losses, the state after the last step)
against the golden record tests/golden/polymnist_20_steps.json: bit for bit on the machine that
made the record, up to float32 rounding on any other (golden_records.py: what a record holds,
what each mode compares, and why). The terminal's header says which mode runs here, and why;
each failure says it again.

The record was made from the code as it was before the modality-spec refactor (which matched it
bit for bit), under the tests' XLA flags (conftest.py). To record it again, only for a change
meant to move it, say why in the commit:
  MOE_EBM_JAX_RECORD_GOLDEN=1 pytest tests/test_golden_polymnist.py
"""

import hashlib
import json
import os
import pathlib

import jax
import numpy as np
import pytest

from moe_ebm_jax import config_lib
from moe_ebm_jax import input_pipeline
from moe_ebm_jax import model_state
from moe_ebm_jax import parallel
from moe_ebm_jax import train

import golden_records
from test_train import smoke_config

GOLDEN = pathlib.Path(__file__).parent / 'golden' / 'polymnist_20_steps.json'
RECORD = os.environ.get('MOE_EBM_JAX_RECORD_GOLDEN') == '1'
NUM_STEPS = 20
_RUNS = {}  # (model, overrides) -> record: each run once per process (the file is one worker's).


def first_moments(opt_state):
  """The optimiser's first moment (torch Adam's exp_avg, optax's mu): after one step, (1 - b1)
  times the gradients."""
  found = [n for n in jax.tree.leaves(
      opt_state, is_leaf=lambda n: hasattr(n, 'exp_avg') or hasattr(n, 'mu'))
           if hasattr(n, 'exp_avg') or hasattr(n, 'mu')]
  if len(found) != 1:
    raise ValueError(f'expected one Adam state in the optimiser state, found {len(found)}')
  return found[0].exp_avg if hasattr(found[0], 'exp_avg') else found[0].mu


def trajectory(data_dir: str, model_name: str, **overrides) -> dict:
  """The golden record of `model_name`'s first NUM_STEPS steps on PolyMNIST, made now."""
  config = smoke_config(data_dir, model_name, num_train_steps=NUM_STEPS, **overrides)
  config_lib.validate(config)
  model = model_state.make_model(config)
  steps = train.compile_steps(config, model, parallel.make_mesh(jax.devices()[:1]))
  state = steps['init'](jax.random.PRNGKey(config.seed))
  # Copied out: the train step donates the state's buffers.
  init = jax.device_get({'vae': state.vae_params, 'ebm': state.ebm_params})
  data = input_pipeline.train_iterator(config, 0, 1)
  batches = hashlib.sha256()
  losses = {'vae_loss': [], 'ebm_loss': []}
  for step in range(NUM_STEPS):
    x = next(data)['x']
    # The (B, M, 28, 28, 3) stack of the five images, as the batches were before modality specs.
    batches.update(np.ascontiguousarray(np.stack([x[f'm{m}'] for m in range(len(x))], 1)).tobytes())
    state, metrics = steps['train'](state, parallel.global_batch(x, steps['batch']))
    if step == 0:
      grads = jax.device_get({'vae': first_moments(state.vae_opt_state),
                              'ebm': first_moments(state.ebm_opt_state) if state.ebm_params else {}})
    for name in losses:
      if name in metrics:
        losses[name].append(float(np.float32(metrics[name])))
  data.close()
  return golden_records.make_record(
      batches=batches.hexdigest()[:16], init=init, grads=grads,
      final={'vae': state.vae_params, 'ebm': state.ebm_params},
      final_all=(state.vae_params, state.ebm_params, state.vae_opt_state, state.ebm_opt_state),
      losses=losses, skipped_steps=int(state.skipped_steps))


def run_once(data_dir: str, model_name: str, **overrides) -> dict:
  key = (model_name, tuple(sorted(overrides.items())))
  if key not in _RUNS:
    _RUNS[key] = trajectory(data_dir, model_name, **overrides)
  return _RUNS[key]


def stored(model_name: str) -> dict:
  return json.loads(GOLDEN.read_text())[model_name]


def explain(mode: str, checks, record: dict) -> str:
  why = ('this machine made the record' if mode == 'exact' else 'recorded elsewhere: ' +
         '; '.join(golden_records.differences(golden_records.machine(), record['machine'])))
  return f'{mode} comparison ({why}):\n' + '\n'.join(map(str, checks))


@pytest.mark.slow
@pytest.mark.parametrize('model_name', config_lib.MODELS)
def test_twenty_steps_match_the_stored_record(polymnist_dir, model_name, record_property):
  got = run_once(polymnist_dir, model_name)
  if RECORD:
    records = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    records[model_name] = got
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(golden_records.dumps(records))
  record = stored(model_name)
  mode = golden_records.mode_for(record)
  record_property('golden_mode', mode)
  checks = golden_records.compare(got, record, mode)
  assert all(c.ok for c in checks), explain(mode, checks, record)


@pytest.mark.slow
@pytest.mark.parametrize('model_name', config_lib.MODELS)
def test_tolerant_mode_passes_against_the_stored_record(polymnist_dir, model_name):
  """The tolerant mode on every machine, the one that made the record included."""
  record = stored(model_name)
  checks = golden_records.compare(run_once(polymnist_dir, model_name), record, 'tolerant')
  assert all(c.ok for c in checks), explain('tolerant', checks, record)


@pytest.mark.slow
def test_exact_mode_against_a_record_made_in_this_run(polymnist_dir):
  """A second run of the same steps in this process is the same, bit for bit, and is compared
  exactly (same machine); one float32 ulp in one loss fails the exact mode, not the tolerant."""
  first = run_once(polymnist_dir, 'mmvaeplus')
  again = trajectory(polymnist_dir, 'mmvaeplus')  # Built and run afresh.
  assert golden_records.made_here(first)
  checks = golden_records.compare(again, first, 'exact')
  assert all(c.ok for c in checks), explain('exact', checks, first)
  nudged = dict(again)
  loss = np.float32(float.fromhex(again['vae_loss'][7]))
  nudged['vae_loss'] = list(again['vae_loss'])
  nudged['vae_loss'][7] = float(np.nextafter(loss, np.float32(np.inf))).hex()
  exact = golden_records.compare(nudged, first, 'exact')
  assert [c.name for c in exact if not c.ok] == ['vae_loss'], explain('exact', exact, first)
  tolerant = golden_records.compare(nudged, first, 'tolerant')
  assert all(c.ok for c in tolerant), explain('tolerant', tolerant, first)


@pytest.mark.slow
def test_a_small_change_to_an_objective_fails_the_tolerant_mode(polymnist_dir):
  """beta 2.5 -> 2.5001 (4 parts in 10^5) moves MVAE's first gradients by more than 6 times the
  tolerance (docs/contributing.md#golden-records: what such a change moves in each model, against
  rounding)."""
  record = stored('mvae')
  changed = run_once(polymnist_dir, 'mvae', **{'model.beta': 2.5001})
  checks = golden_records.compare(changed, record, 'tolerant')
  failed = [c.name for c in checks if not c.ok]
  assert 'grads/vae' in failed, explain('tolerant', checks, record)
  assert golden_records.margin(checks) > 4, explain('tolerant', checks, record)
