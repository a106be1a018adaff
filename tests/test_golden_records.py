"""The golden records' two modes (golden_records.py) on known inputs: float32 ulps, sketched
distances against NumPy's, leaf matching, what each mode passes and fails, which mode a
machine gets."""

import json

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from moe_ebm_jax import optimizers

import golden_records as gr
from test_golden_polymnist import first_moments

EPS = gr.EPS


def test_ulps_count_float32_steps():
  one = np.float32(1.0)
  assert gr.ulps(1.0, 1.0) == 0
  assert gr.ulps(one, np.nextafter(one, np.float32(2))) == 1
  assert gr.ulps(1.0, 2.0) == 2 ** 23  # One binade.
  assert gr.ulps(-0.0, 0.0) == 0
  tiny = np.float32(1e-45)  # The smallest subnormal: one step either side of zero.
  assert gr.ulps(tiny, -tiny) == 2
  assert gr.ulps(-1.0, float(np.nextafter(np.float32(-1), np.float32(-2)))) == 1


def _tree(rng):
  return {'dense': {'kernel': rng.normal(size=(16, 8)).astype(np.float32),
                    'bias': rng.normal(size=(8,)).astype(np.float32)},
          'out': rng.normal(size=(8, 8)).astype(np.float32), 'count': np.int32(3)}


def test_sketched_distance_estimates_the_relative_distance():
  """Over random directions, the squared estimate averages the true squared distance (random
  signs: E[(s . d)^2] = |d|^2), spread as chi-squared with 3 degrees of freedom over 3: under a
  third of the truth 1 time in 22, over 3 times it 1 in 10^5."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 32)).astype(np.float32)
  ratios = []
  for _ in range(300):
    d = rng.normal(size=x.shape)
    y = (x + 1e-4 * np.linalg.norm(x) * d / np.linalg.norm(d)).astype(np.float32)
    truth = np.linalg.norm(y.astype(np.float64) - x) / np.linalg.norm(x.astype(np.float64))
    [got] = gr.leaf_distances(gr.sketch([y]), gr.sketch([x]))
    ratios.append(got / truth)
  ratios = np.array(ratios)
  assert 0.85 < np.mean(ratios ** 2) < 1.15, np.mean(ratios ** 2)
  assert np.mean(ratios < 1 / 3) < 0.1 and ratios.max() < 3, (np.mean(ratios < 1 / 3), ratios.max())


def test_leaves_match_whatever_their_names_and_order():
  rng = np.random.default_rng(1)
  t = _tree(rng)
  renamed = {'z': t['out'], 'a': {'b': t['dense']['bias'], 'w': t['dense']['kernel']},
             'steps': t['count']}
  assert gr.leaf_distances(gr.sketch(renamed), gr.sketch(t)) == [0.0] * 4
  # Two leaves of one shape swapped between names: the same multiset of leaves.
  u = {'p': rng.normal(size=(4, 4)).astype(np.float32),
       'q': rng.normal(size=(4, 4)).astype(np.float32)}
  swapped = {'p': u['q'], 'q': u['p']}
  assert gr.leaf_distances(gr.sketch(swapped), gr.sketch(u)) == [0.0, 0.0]


def test_a_changed_structure_or_integer_is_infinitely_far():
  rng = np.random.default_rng(2)
  t = _tree(rng)
  extra = dict(t, more=np.zeros(3, np.float32))
  assert gr.leaf_distances(gr.sketch(extra), gr.sketch(t)) == [np.inf]
  reshaped = dict(t, out=t['out'].reshape(4, 16))
  assert gr.leaf_distances(gr.sketch(reshaped), gr.sketch(t)) == [np.inf]
  counted = dict(t, count=np.int32(4))
  assert np.inf in gr.leaf_distances(gr.sketch(counted), gr.sketch(t))


def test_a_leaf_that_is_zero_up_to_rounding_is_judged_at_the_tree_scale():
  """An energy's output-bias gradient is 1 - 1: 0 on one machine, a few EPS on another."""
  rng = np.random.default_rng(3)
  w = rng.normal(size=(16, 16)).astype(np.float32)
  tree_norm = np.linalg.norm(w.astype(np.float64))
  want = {'w': w, 'b': np.zeros(1, np.float32)}
  got = {'w': w, 'b': np.full(1, 2 * EPS * tree_norm, np.float32)}
  d = gr.leaf_distances(gr.sketch(got), gr.sketch(want))
  assert max(d) == pytest.approx(2 * EPS, rel=1e-3)
  # A leaf above the floor is judged at its own scale.
  small = {'w': w, 'b': np.full(1, 0.01 * tree_norm, np.float32)}
  moved = {'w': w, 'b': small['b'] * np.float32(1 + 1e-3)}
  d = gr.leaf_distances(gr.sketch(moved), gr.sketch(small))
  assert max(d) == pytest.approx(1e-3, rel=1e-3)


def _record(rng, *, scale_grads=1.0, scale_final=(), loss_ulps=0, batches='b0'):
  """A record of small trees; scale_grads multiplies a grads leaf, scale_final the final
  leaves it names by 1.01; loss_ulps moves step 3's loss."""
  init = {'vae': {f'l{i}': rng.normal(size=(8, 4)).astype(np.float32) for i in range(5)},
          'ebm': {}}
  grads = {'vae': {k: v * np.float32(0.1) for k, v in init['vae'].items()}, 'ebm': {}}
  grads['vae']['l0'] = (grads['vae']['l0'] * scale_grads).astype(np.float32)
  final = {'vae': {k: v * np.float32(1.01) if k in scale_final else v
                   for k, v in init['vae'].items()}, 'ebm': {}}
  losses = [np.float32(20000 + i) for i in range(10)]
  losses[3] = (np.array(losses[3]).view(np.int32) + loss_ulps).view(np.float32)[()]
  return gr.make_record(batches=batches, init=init, grads=grads, final=final,
                        final_all=(final['vae'], grads['vae']),
                        losses={'vae_loss': [float(v) for v in losses], 'ebm_loss': []},
                        skipped_steps=0)


def _failed(checks):
  return sorted(c.name for c in checks if not c.ok)


def test_the_exact_mode_fails_on_one_ulp_the_tolerant_on_more_than_its_tolerance():
  want = _record(np.random.default_rng(4))
  same = _record(np.random.default_rng(4))
  assert _failed(gr.compare(same, want, 'exact')) == []
  assert _failed(gr.compare(same, want, 'tolerant')) == []
  assert gr.margin(gr.compare(same, want, 'tolerant')) == 0.0
  one_ulp = _record(np.random.default_rng(4), loss_ulps=1)
  assert _failed(gr.compare(one_ulp, want, 'exact')) == ['vae_loss']
  assert _failed(gr.compare(one_ulp, want, 'tolerant')) == []
  over = _record(np.random.default_rng(4), loss_ulps=gr.LOSS_TOL_ULPS + 1)
  assert _failed(gr.compare(over, want, 'tolerant')) == ['vae_loss']
  # A gradient leaf moved by a quarter of the tolerance passes; by twice of it, fails.
  for factor, expected in ((0.25, []), (2.0, ['grads/vae'])):
    moved = _record(np.random.default_rng(4), scale_grads=1 + factor * gr.GRADS_TOL)
    assert _failed(gr.compare(moved, want, 'tolerant')) == expected, factor
    assert _failed(gr.compare(moved, want, 'exact')) == ['final']  # Its digests include grads.
  # The final state is judged by its median leaf: 2 of 5 leaves moved by 1% pass, 3 fail.
  assert _failed(gr.compare(_record(np.random.default_rng(4), scale_final=('l0', 'l1')), want,
                            'tolerant')) == []
  assert _failed(gr.compare(_record(np.random.default_rng(4), scale_final=('l0', 'l1', 'l2')),
                            want, 'tolerant')) == ['final/vae']
  other_data = _record(np.random.default_rng(4), batches='b1')
  for mode in ('exact', 'tolerant'):
    assert _failed(gr.compare(other_data, want, mode)) == ['batches']


def test_the_mode_follows_the_machine_that_made_the_record(monkeypatch, tmp_path):
  monkeypatch.delenv(gr.MODE_ENV, raising=False)
  here = _record(np.random.default_rng(5))
  assert gr.made_here(here) and gr.mode_for(here) == 'exact'
  elsewhere = dict(here, machine=dict(here['machine'], cpu='Intel(R) Xeon(R) Processor',
                                      caches=['L2 Unified 2048K']))
  assert gr.mode_for(elsewhere) == 'tolerant'
  assert [d.split(':')[0] for d in gr.differences(gr.machine(), elsewhere['machine'])] == [
      'caches', 'cpu']
  path = tmp_path / 'golden.json'
  path.write_text(gr.dumps({'m': here}))
  assert 'exact mode: this machine made them' in gr.header(path)
  path.write_text(gr.dumps({'m': elsewhere}))
  line = gr.header(path)
  assert 'tolerant mode: made on Intel(R) Xeon(R) Processor' in line and 'caches, cpu' in line
  monkeypatch.setenv(gr.MODE_ENV, 'tolerant')
  assert gr.mode_for(here) == 'tolerant' and 'forced by' in gr.header(path)
  monkeypatch.setenv(gr.MODE_ENV, 'bitwise')
  with pytest.raises(ValueError, match='expected exact, tolerant or unset'):
    gr.mode_for(here)


def test_records_round_trip_through_json_one_leaf_per_line():
  record = _record(np.random.default_rng(6))
  text = gr.dumps({'m': record})
  assert json.loads(text) == {'m': json.loads(json.dumps(record))}
  lines = [l.strip() for l in text.splitlines() if l.strip().startswith('["float32:')]
  assert len(lines) == 3 * 5 and all(l.count('"') == 2 for l in lines)  # init, grads, final.


@pytest.mark.parametrize('implementation', ['torch', 'optax'])
@pytest.mark.parametrize('amsgrad', [False, True])
def test_first_moments_are_a_tenth_of_the_first_gradients(implementation, amsgrad):
  params = {'w': jnp.ones((3, 2)), 'b': jnp.zeros(2)}
  grads = {'w': jnp.arange(6.0).reshape(3, 2), 'b': jnp.array([-1.0, 2.0])}
  tx = optimizers.adam(implementation, 1e-3, amsgrad=amsgrad)
  _, state = tx.update(grads, tx.init(params), params)
  got = first_moments(state)
  for k in grads:
    np.testing.assert_allclose(got[k], 0.1 * grads[k], rtol=1e-6)
  chained = optax.chain(optax.clip_by_global_norm(1e9), tx)
  _, state = chained.update(grads, chained.init(params), params)
  np.testing.assert_allclose(first_moments(state)['w'], 0.1 * grads['w'], rtol=1e-6)
