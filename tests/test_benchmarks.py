"""benchmarks/: the suite's checks and bookkeeping, one real run at smoke scale, the conv
alternatives of conv_layers.py against XLA's convolution, golden_margins.py's variants."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, 'benchmarks', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


suite = _load('suite')
conv_layers = _load('conv_layers')


@pytest.mark.parametrize('shape', [(10, 14, 14, 32, 40), (10, 14, 15, 3, 64), (10, 15, 14, 8, 3),
                                   (3, 7, 7, 5, 6)])
def test_conv_layers_forward_alternatives_equal_xla_conv(shape):
  n, h, w, c, d = shape  # N = 10: chunks of 5 examples; the last shape is left to XLA.
  x = jax.random.normal(jax.random.PRNGKey(0), (n, h, w, c))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, c, d))
  want = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  fns = [conv_layers.folded_forward, conv_layers.output_taps_forward,
         conv_layers.chunked(conv_layers.folded_forward), conv_layers.best_forward]
  for fn in fns:
    got = jax.jit(fn)(x, kernel)
    assert got.shape == (n, h, w, d)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * float(jnp.abs(want).max()))


def test_flops_of_a_matmul_and_of_a_rolled_loop():
  a, b = jnp.ones((32, 48)), jnp.ones((48, 16))
  compiled = jax.jit(lambda a, b: a @ b).lower(a, b).compile()
  assert suite.cost_flops(compiled) == 2 * 32 * 48 * 16
  assert not suite.has_loops(compiled.as_text())

  def ten_matmuls(x, w):
    return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=10)[0]

  looped = jax.jit(ten_matmuls).lower(jnp.ones((8, 8)), jnp.ones((8, 8))).compile()
  assert suite.has_loops(looped.as_text())  # Its FLOPs are then a lower bound.
  rng_only = jax.jit(lambda k: jax.random.normal(jax.random.fold_in(k, 3), (4,)))
  assert not suite.has_loops(rng_only.lower(jax.random.PRNGKey(0)).compile().as_text())
  # Before XLA's passes (the FLOPs counted on a lowered program), loops are told by their state.
  lowered = jax.jit(ten_matmuls).lower(jnp.ones((8, 8)), jnp.ones((8, 8)))
  assert suite.has_loops(lowered.compiler_ir('hlo').as_hlo_text())
  assert not suite.has_loops(rng_only.lower(jax.random.PRNGKey(0)).compiler_ir('hlo')
                             .as_hlo_text())


def test_host_transfers_are_found():
  def with_callback(x):
    return jax.pure_callback(lambda v: v * 2, jax.ShapeDtypeStruct((3,), jnp.float32), x)

  x = jnp.ones(3)
  assert suite.host_transfers(jax.jit(with_callback).lower(x).compile().as_text()) >= 1
  assert suite.host_transfers(jax.jit(lambda x: x * 2).lower(x).compile().as_text()) == 0


def test_ebm_overhead_accounting():
  paired = {'pairs': 3, 'median_extra_s': 0.5, 'min_extra_s': 0.45, 'max_extra_s': 0.6,
            'posterior_steps': 2}
  langevin = {'scale': 'cpu', 'prior_chain': {'median_s': 0.1},
              'posterior_step': {'median_s': 0.15}}
  row = suite.ebm_overhead('cpu', paired, langevin)
  assert row['measured_extra_s'] == pytest.approx(0.5)
  assert row['chains_s'] == pytest.approx(0.1 + 2 * 0.15)
  assert row['unexplained_s'] == pytest.approx(0.1)
  assert row['measured_extra_range_s'] == [0.45, 0.6]


@pytest.mark.slow
def test_smoke_run_prints_tables_and_a_json_record(tmp_path):
  out = tmp_path / 'bench.json'
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks', 'suite.py'), '--scales=smoke',
       '--models=mmvaeplus,moe_ebm',
       '--sections=matmul,train,langevin,ebm_overhead,generation',
       '--batch_size=8', '--steps=2', '--repeats=1', '--host_devices=2',
       '--set=model.conv_backward=matmul', f'--json_out={out}'],
      capture_output=True, text=True, timeout=900, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads(out.read_text())
  assert record['num_devices'] == 2 and record['matmul']['gflops'] > 0
  assert record['matmul']['shape'] == [2048] * 3 and record['matmul']['highest_gflops'] > 0
  rows = {r['model']: r for r in record['train']}
  assert set(rows) == {'mmvaeplus', 'moe_ebm'}
  for r in rows.values():
    assert r['recompiles'] == 0 and r['host_transfers'] == 0
    assert r['devices'] == 2 and r['widths'] == [4, 8, 8]
    assert r['conv_backward'] == 'matmul'
    assert r['min_s'] <= r['median_s'] <= r['max_s']
    assert r['flops_per_step'] > 0 and r['memory_plan_bytes'] > 0
  # MOE-EBM's step does more work than MMVAE+'s: its chains.
  assert rows['moe_ebm']['flops_per_step'] > rows['mmvaeplus']['flops_per_step']
  (overhead,) = record['ebm_overhead']
  assert overhead['posterior_steps'] == rows['moe_ebm']['posterior_steps']
  assert overhead['pairs'] == 2
  lo, hi = overhead['measured_extra_range_s']
  assert lo <= overhead['measured_extra_s'] <= hi
  assert '| smoke | mmvaeplus |' in result.stdout and 'GFLOP/s' in result.stdout


@pytest.mark.slow
def test_unknown_override_key_is_refused(tmp_path):
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks', 'suite.py'), '--scales=smoke',
       '--models=mmvaeplus', '--sections=train', '--set=model.conv_speed=1'],
      capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert result.returncode != 0
  assert 'conv_speed' in result.stderr


def test_golden_margins_variants_set_real_config_keys():
  """Each deliberate change of golden_margins.py moves a key the smoke config has, by a small
  relative amount (a renamed key would otherwise fail every run of the script)."""
  golden_margins = _load('golden_margins')
  from moe_ebm_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.from_file(os.path.join(ROOT, 'configs', 'smoke.py'), 'moe_ebm')
  changes = [v for v in golden_margins.VARIANTS.values() if v[2]]
  assert len(changes) >= 6
  for _, _, overrides, _ in changes:
    for key, value in overrides.items():
      section, name = key.split('.')
      assert name in config[section], key
      assert 0 < abs(value / config[section][name] - 1) <= 1e-3, (key, value)


@pytest.mark.slow
def test_golden_margins_refuses_an_unknown_variant_before_any_work(tmp_path):
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks', 'golden_margins.py'),
       '--variants=one_core,bitflip', f'--data_dir={tmp_path / "none"}'],
      capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert result.returncode != 0 and 'bitflip' in result.stderr
  assert not (tmp_path / 'none').exists()
