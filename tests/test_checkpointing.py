"""Checkpointer round trips, shardings, retention, resume; run-config checks; graceful shutdown."""

import json
import math
import os
import signal
import threading
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from moe_ebm_jax import checkpointing

P = jax.sharding.PartitionSpec


def _train_state(seed: int = 0) -> dict:
  """A realistic train state: flax params, two optax states, an int step, raw PRNG key data."""
  rng = jax.random.key(seed)
  params = nn.Dense(3).init(rng, jnp.zeros((1, 4)))['params']
  params = {'dense': params, 'scale': jnp.arange(3, dtype=jnp.bfloat16)}
  # Non-zero moments, so a restore that dropped or swapped them would show.
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.5, params)
  adam = optax.adam(1e-3)
  clipped = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
  _, adam_state = adam.update(grads, adam.init(params), params)
  _, clipped_state = clipped.update(grads, clipped.init(params), params)
  return {'params': params, 'opt_adam': adam_state, 'opt_clipped': clipped_state,
          'step': jnp.asarray(17, jnp.int32),
          'key': jax.random.key_data(jax.random.fold_in(rng, 1))}


def _assert_same_tree(restored, expected):
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _steps_on_disk(workdir) -> set[int]:
  return {int(name) for name in os.listdir(os.path.join(workdir, 'checkpoints'))
          if name.isdigit()}


@pytest.mark.parametrize('async_save', [True, False])
def test_roundtrip_keeps_values_dtypes_and_optax_types(tmp_path, async_save):
  state = _train_state()
  extra = {'next_index': 123, 'bad_steps': np.int64(2), 'wall_clock': 4.5}
  with checkpointing.Checkpointer(tmp_path, keep_latest=2, keep_best=1,
                                  async_save=async_save) as ckpt:
    assert ckpt.save(17, state, extra, metrics={'test_loss': 1.5})
    restored, restored_extra = ckpt.restore(jax.eval_shape(lambda: state))
  _assert_same_tree(restored, state)
  assert isinstance(restored['opt_adam'][0], optax.ScaleByAdamState)
  assert isinstance(restored['opt_clipped'][0], optax.EmptyState)  # clip_by_global_norm.
  assert isinstance(restored['opt_clipped'][1][0], optax.ScaleByAdamState)
  assert restored['params']['scale'].dtype == jnp.bfloat16
  assert restored['key'].dtype == jnp.uint32
  assert jax.random.key_data(jax.random.wrap_key_data(restored['key'])).tolist() == \
      state['key'].tolist()
  assert restored_extra == {'next_index': 123, 'bad_steps': 2, 'wall_clock': 4.5}


def test_restore_places_arrays_on_target_sharding(tmp_path):
  state = _train_state()
  mesh = jax.make_mesh((1,), ('data',))
  replicated = jax.sharding.NamedSharding(mesh, P())
  split = jax.sharding.NamedSharding(mesh, P('data'))  # Rows over 'data'.

  def abstract(path, x):
    sharding = split if path[-1] == jax.tree_util.DictKey('kernel') else replicated
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  target = jax.tree_util.tree_map_with_path(abstract, state)
  with checkpointing.Checkpointer(tmp_path, keep_latest=1, keep_best=0) as ckpt:
    ckpt.save(1, state, {})
    restored, _ = ckpt.restore(target)
  _assert_same_tree(restored, state)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
    assert got.sharding == want.sharding
  assert restored['params']['dense']['kernel'].sharding.spec == P('data')


def test_keeps_latest_and_best_never_deleting_newest(tmp_path):
  state = {'w': jnp.zeros(2)}
  with checkpointing.Checkpointer(tmp_path, keep_latest=2, keep_best=1) as ckpt:
    for step, loss in enumerate([5., 1., 4., 3., 6., 7.], start=1):
      ckpt.save(step, state, {}, metrics={'test_loss': loss})
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [2, 5, 6]
    assert ckpt.latest_step() == 6  # The worst loss, yet kept: resume needs it.
    assert ckpt.best_step() == 2
  assert _steps_on_disk(tmp_path) == {2, 5, 6}


def test_steps_without_metric_are_kept_only_while_latest(tmp_path, caplog):
  state = {'w': jnp.zeros(2)}
  losses = [3., None, 1., None, math.nan, None, 2.]  # NaN counts as no metric.
  with checkpointing.Checkpointer(tmp_path, keep_latest=2, keep_best=1) as ckpt:
    for step, loss in enumerate(losses, start=1):
      ckpt.save(step, state, {}, metrics=None if loss is None else {'test_loss': loss})
    ckpt.wait_until_finished()
    # Unranked saves are meant: orbax's warning about each of them is not shown.
    assert 'tracked_metric' not in caplog.text
    assert ckpt.all_steps() == [3, 6, 7]
    assert ckpt.best_step() == 3
    assert ckpt.metrics(6) is None and ckpt.metrics(3) == {'test_loss': 1.0}
  with checkpointing.Checkpointer(tmp_path / 'unranked', keep_latest=2, keep_best=1) as ckpt:
    for step in range(1, 5):
      ckpt.save(step, state, {}, metrics={'train_loss': 0.1} if step % 2 else None)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [3, 4]
    assert ckpt.best_step() is None


def test_resume_in_new_checkpointer_finds_latest_extra_and_best(tmp_path):
  state = _train_state()
  ckpt = checkpointing.Checkpointer(tmp_path, keep_latest=2, keep_best=1)
  for step, loss in zip([10, 20, 30], [2., 1., 3.]):
    ckpt.save(step, jax.tree.map(lambda x: x + step if x.dtype != jnp.uint32 else x, state),
              {'next_index': step * 64}, metrics={'test_loss': loss})
  assert not ckpt.save(30, state, {}, force=True)  # An existing step is never overwritten.
  ckpt.close()

  ckpt = checkpointing.Checkpointer(tmp_path, keep_latest=2, keep_best=1)
  assert ckpt.latest_step() == 30 and ckpt.all_steps() == [20, 30]
  restored, extra = ckpt.restore(jax.eval_shape(lambda: state))
  assert extra == {'next_index': 30 * 64}
  assert int(restored['step']) == 17 + 30
  _, extra_20 = ckpt.restore(state, step=20)  # A concrete target works too.
  assert extra_20 == {'next_index': 20 * 64}
  # The test losses were persisted: the best step survives later saves after the restart.
  assert ckpt.best_step() == 20
  ckpt.save(40, state, {}, metrics={'test_loss': 9.})
  ckpt.save(50, state, {})
  ckpt.close()
  assert _steps_on_disk(tmp_path) == {20, 40, 50}
  with pytest.raises(FileNotFoundError):
    checkpointing.Checkpointer(tmp_path / 'empty', keep_latest=1, keep_best=0).restore(state)


def _config(widths=(64, 128, 256), num_modalities=5, num_train_steps=1000):
  c = ml_collections.ConfigDict()
  c.num_train_steps = num_train_steps
  c.model = ml_collections.ConfigDict({'name': 'moe_ebm', 'widths': widths})
  c.data = ml_collections.ConfigDict({'num_modalities': num_modalities, 'data_dir': None})
  return c


def _snapshot(root) -> dict:
  """Bytes and mtime of every file under `root`."""
  snapshot = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, 'rb') as f:
        snapshot[path] = (f.read(), os.stat(path).st_mtime_ns)
  return snapshot


def test_run_config_written_then_checked(tmp_path):
  keys = ('model.name', 'model.widths', 'data.num_modalities')
  assert checkpointing.check_or_write_run_config(tmp_path, _config(), keys)
  stored = json.loads((tmp_path / 'config.json').read_text())
  assert stored['model']['widths'] == [64, 128, 256]
  with checkpointing.Checkpointer(tmp_path, keep_latest=1, keep_best=0) as ckpt:
    ckpt.save(1, {'w': jnp.zeros(2)}, {'next_index': 8})

  before = _snapshot(tmp_path)
  # Same config (tuples against the stored JSON lists) and a changed unlisted key both pass.
  assert not checkpointing.check_or_write_run_config(tmp_path, _config(), keys)
  assert not checkpointing.check_or_write_run_config(
      tmp_path, _config(num_train_steps=5000), keys)  # Extending a run is allowed.

  with pytest.raises(checkpointing.IncompatibleRunError) as e:
    checkpointing.check_or_write_run_config(
        tmp_path, _config(widths=(32, 64), num_modalities=3), keys)
  message = str(e.value)
  assert 'model.widths' in message and '[64, 128, 256]' in message and '[32, 64]' in message
  assert 'data.num_modalities' in message and '5' in message and '3' in message
  assert 'model.name' not in message
  assert isinstance(e.value, ValueError)
  # A listed key that is new since the run started differs too (absent from both: equal).
  assert not checkpointing.check_or_write_run_config(tmp_path, _config(), keys + ('model.depth',))
  deeper = _config()
  deeper.model.depth = 4
  with pytest.raises(checkpointing.IncompatibleRunError,
                     match=r'model\.depth: <missing> in the run, 4 now'):
    checkpointing.check_or_write_run_config(tmp_path, deeper, keys + ('model.depth',))
  # ... unless declared added with the value older runs had: then that value is compared.
  assert not checkpointing.check_or_write_run_config(tmp_path, deeper, keys + ('model.depth',),
                                                     {'model.depth': 4})
  with pytest.raises(checkpointing.IncompatibleRunError,
                     match=r'model\.depth: 3 in the run, 4 now'):
    checkpointing.check_or_write_run_config(tmp_path, deeper, keys + ('model.depth',),
                                            {'model.depth': 3})
  assert _snapshot(tmp_path) == before


def _wait_for(predicate, timeout_s: float = 2.0) -> bool:
  # The signal may land on another (JAX) thread; Python runs the handler in the main thread soon.
  deadline = time.monotonic() + timeout_s
  while not predicate() and time.monotonic() < deadline:
    time.sleep(0.01)
  return predicate()


def test_graceful_shutdown_turns_signals_into_a_flag():
  sentinel_calls = []

  def sentinel(signum, frame):
    del frame
    sentinel_calls.append(signum)

  original = signal.signal(signal.SIGTERM, sentinel)
  try:
    with checkpointing.GracefulShutdown() as shutdown:
      assert not shutdown.requested
      os.kill(os.getpid(), signal.SIGTERM)
      assert _wait_for(lambda: shutdown.requested)
      assert shutdown.signal_name == 'SIGTERM'
    assert signal.getsignal(signal.SIGTERM) is sentinel
    assert sentinel_calls == []  # The previous handler did not see the signal in the context.

    sigint_before = signal.getsignal(signal.SIGINT)
    with checkpointing.GracefulShutdown() as shutdown:
      os.kill(os.getpid(), signal.SIGINT)
      assert _wait_for(lambda: shutdown.requested)
      assert shutdown.signal_name == 'SIGINT'
    assert signal.getsignal(signal.SIGINT) is sigint_before
  finally:
    signal.signal(signal.SIGTERM, original)


def test_graceful_shutdown_outside_main_thread_installs_nothing():
  before = signal.getsignal(signal.SIGTERM)
  seen = {}

  def run():
    with checkpointing.GracefulShutdown() as shutdown:
      seen['handler'] = signal.getsignal(signal.SIGTERM)
      shutdown.request()
      seen['requested'] = shutdown.requested

  thread = threading.Thread(target=run)
  thread.start()
  thread.join()
  assert seen == {'handler': before, 'requested': True}
  assert signal.getsignal(signal.SIGTERM) is before


@flax.struct.dataclass
class _StateBefore:
  w: jax.Array
  step: jax.Array


@flax.struct.dataclass
class _StateAfter:  # _StateBefore with a field added later.
  w: jax.Array
  extra_state: Any
  step: jax.Array


def test_a_checkpoint_from_before_an_empty_field_was_added_restores(tmp_path):
  with checkpointing.Checkpointer(tmp_path, keep_latest=1, keep_best=0) as ckpt:
    ckpt.save(2, _StateBefore(w=jnp.arange(3.0), step=jnp.array(2)), {'next_index': 4})
    state, extra = ckpt.restore(_StateAfter(w=jnp.zeros(3), extra_state={}, step=jnp.array(0)))
    assert isinstance(state, _StateAfter) and state.extra_state == {}
    np.testing.assert_array_equal(state.w, [0.0, 1.0, 2.0])
    assert int(state.step) == 2 and extra == {'next_index': 4}
    # A field added with arrays cannot be made up: the restore fails.
    with pytest.raises(ValueError, match='tree structures do not match'):
      ckpt.restore(_StateAfter(w=jnp.zeros(3), extra_state={'chains': jnp.zeros(2)},
                               step=jnp.array(0)))


@flax.struct.dataclass
class _StateRenamed:  # _StateBefore with `w` renamed and an empty field added.
  weights: jax.Array
  extra_state: Any
  step: jax.Array
  RENAMED_FIELDS = {'weights': 'w'}


def test_a_checkpoint_from_before_a_field_was_renamed_restores_under_the_new_name(tmp_path):
  with checkpointing.Checkpointer(tmp_path, keep_latest=1, keep_best=0) as ckpt:
    ckpt.save(3, _StateBefore(w=jnp.arange(4.0), step=jnp.array(3)), {'next_index': 1})
    state, extra = ckpt.restore(_StateRenamed(weights=jnp.zeros(4), extra_state={},
                                              step=jnp.array(0)))
    assert isinstance(state, _StateRenamed) and state.extra_state == {}
    np.testing.assert_array_equal(state.weights, [0.0, 1.0, 2.0, 3.0])
    assert int(state.step) == 3 and extra == {'next_index': 1}
    # Saved under the new names, it restores as usual.
    ckpt.save(4, state.replace(step=jnp.array(4)), {'next_index': 2})
    again, _ = ckpt.restore(_StateRenamed(weights=jnp.zeros(4), extra_state={},
                                          step=jnp.array(0)))
    np.testing.assert_array_equal(again.weights, state.weights)
    assert int(again.step) == 4

