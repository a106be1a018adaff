"""PolyMNIST training is unchanged by refactors, bit for bit.

For each of the 8 models at smoke scale: the parameters at initialisation and after 20 training
steps (each leaf's bytes, hashed; compared as a sorted list, so renaming or regrouping the params
pytree does not matter, changing a value does), and every step's losses (float32, exactly),
against values recorded from the code as it was before the modality-spec refactor
(tests/golden/polymnist_20_steps.json).

The values are those of XLA:CPU under the tests' flags (conftest.py: backend optimisation
level 1, code generation held to AVX2), recorded on an AVX-512 machine. They were first recorded
at level 0 before the refactor; the refactored library matched them bit for bit there, and it is
that library, unchanged, that recorded them again at level 1 (where AVX-512 code rounds a few
losses differently in the last bit: hence AVX2 on every machine). To record them again, only
for a change meant to move them, say why in the commit:
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

from test_train import smoke_config

GOLDEN = pathlib.Path(__file__).parent / 'golden' / 'polymnist_20_steps.json'
RECORD = os.environ.get('MOE_EBM_JAX_RECORD_GOLDEN') == '1'
NUM_STEPS = 20


def leaf_digests(tree) -> list[str]:
  """Sorted sha256 digests (16 hex digits) of every leaf's dtype, shape and bytes."""
  out = []
  for x in jax.tree.leaves(tree):
    x = np.asarray(x)
    h = hashlib.sha256(f'{x.dtype}{x.shape}'.encode())
    h.update(np.ascontiguousarray(x).tobytes())
    out.append(h.hexdigest()[:16])
  return sorted(out)


def trajectory(data_dir: str, model_name: str) -> dict:
  """What the golden file records of `model_name`'s first NUM_STEPS steps on PolyMNIST."""
  config = smoke_config(data_dir, model_name, num_train_steps=NUM_STEPS)
  config_lib.validate(config)
  model = model_state.make_model(config)
  steps = train.compile_steps(config, model, parallel.make_mesh(jax.devices()[:1]))
  state = steps['init'](jax.random.PRNGKey(config.seed))
  out = {'init': leaf_digests((state.vae_params, state.ebm_params))}
  data = input_pipeline.train_iterator(config, 0, 1)
  batches = hashlib.sha256()
  losses = {'vae_loss': [], 'ebm_loss': []}
  for _ in range(NUM_STEPS):
    x = next(data)['x']
    # The (B, M, 28, 28, 3) stack of the five images, as the batches were before modality specs.
    batches.update(np.ascontiguousarray(np.stack([x[f'm{m}'] for m in range(len(x))], 1)).tobytes())
    state, metrics = steps['train'](state, parallel.global_batch(x, steps['batch']))
    for name in losses:
      if name in metrics:
        losses[name].append(float(np.float32(metrics[name])).hex())
  data.close()
  out['batches'] = batches.hexdigest()[:16]
  out['final'] = leaf_digests((state.vae_params, state.ebm_params, state.vae_opt_state,
                               state.ebm_opt_state))
  out.update({k: v for k, v in losses.items() if v})
  out['skipped_steps'] = int(state.skipped_steps)
  return out


@pytest.mark.slow
@pytest.mark.parametrize('model_name', config_lib.MODELS)
def test_twenty_steps_equal_the_recorded_ones(polymnist_dir, model_name):
  got = trajectory(polymnist_dir, model_name)
  if RECORD:
    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    recorded[model_name] = got
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + '\n')
  expected = json.loads(GOLDEN.read_text())[model_name]
  assert got['skipped_steps'] == 0
  assert got['batches'] == expected['batches'], 'the input batches changed'
  assert got['init'] == expected['init'], 'the parameters at initialisation changed'
  for name in ('vae_loss', 'ebm_loss'):
    assert got.get(name) == expected.get(name), f'{name} changed: {got.get(name)}'
  assert got['final'] == expected['final'], 'the parameters after 20 steps changed'
