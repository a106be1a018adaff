"""Checkpoints and workdir management for the trainer: save, resume, retention, clean shutdown.

Layout of a workdir:

  <workdir>/config.json            The config of the run's first start (check_or_write_run_config).
  <workdir>/checkpoints/<step>/    One orbax checkpoint per saved step, with the items
      state/                       the train state pytree (ocp.args.StandardSave),
      extra/                       small JSON: data iterator position, counters, wall-clock,
      metrics/                     {'test_loss': ...} when the step was evaluated.

Retention keeps the latest `keep_latest` steps AND the `keep_best` steps of smallest test loss
(`AnyPreservationPolicy([LatestN, BestN])`). Orbax's `best_fn` + `max_to_keep` is deliberately
not used: it keeps the N best and can delete the newest step, which breaks resume.

Orbax traps handled here (orbax-checkpoint 0.12.8):
- A CheckpointManager with only a `preservation_policy` writes no metrics to disk (it writes them
  only when `best_fn` is set), so after a restart BestN sees no metrics at all and either keeps
  every old step forever or, with keep_checkpoints_without_metrics=False, deletes the best one.
  We therefore also set `best_fn`/`best_mode='min'`; they make orbax persist the metrics and
  rank `best_step()`, while deletion is decided by the preservation policy alone.
- Steps saved without a finite test loss are stored without metrics and are kept by LatestN only
  (BestN gets keep_checkpoints_without_metrics=False). Passing +inf or the last known test loss
  instead would let an unevaluated step take a "best" slot or tie with the evaluated one.
- Restoring without a target turns optax NamedTuples into lists; `restore` always restores
  against an abstract target, which also carries the shardings to restore onto.
"""

from __future__ import annotations

import dataclasses
import json
import logging as py_logging
import math
import os
import signal
import threading
import types
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

from moe_ebm_jax import cache

PyTree = Any

CHECKPOINT_SUBDIR = 'checkpoints'
CONFIG_FILENAME = 'config.json'
BEST_METRIC = 'test_loss'  # Smaller is better.
_STATE_ITEM = 'state'
_EXTRA_ITEM = 'extra'
_MISSING = object()


def _json_default(value: Any) -> Any:
  """Numpy and JAX scalars to Python numbers; anything else is not JSON."""
  if hasattr(value, 'item') and getattr(value, 'shape', None) == ():
    return value.item()
  raise TypeError(f'{type(value).__name__} is not JSON serialisable: {value!r}')


def _to_json(value: Mapping[str, Any], what: str) -> dict[str, Any]:
  """A JSON round trip, so bad values fail here and not in orbax's background save thread."""
  try:
    return json.loads(json.dumps(dict(value), default=_json_default))
  except (TypeError, ValueError) as e:
    raise TypeError(f'checkpoint {what} must be JSON serialisable: {e}') from e


def _best_metric(metrics: Mapping[str, Any]) -> float:
  return float(metrics[BEST_METRIC])


def _ranked_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float] | None:
  """The metrics to store with a step, or None when it has no finite test loss to rank by.

  Other scalar metrics are stored alongside the test loss; without one nothing is stored, so
  the step is kept only while it is among the latest (see the module docstring).
  """
  if metrics is None or metrics.get(BEST_METRIC) is None:
    return None
  if not math.isfinite(float(metrics[BEST_METRIC])):
    logging.warning('Checkpoint metric %s=%s is not finite; the step is not ranked as best.',
                    BEST_METRIC, metrics[BEST_METRIC])
    return None
  return {k: float(v) for k, v in metrics.items()}


class _UnrankedSaveFilter(py_logging.Filter):
  """Drops orbax's warning on every save without metrics: unevaluated steps are saved without
  metrics on purpose (see the module docstring), so it says nothing to the user."""
  MESSAGE = 'Requested `tracked_metric`; did not provide metrics.'

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.getMessage() != self.MESSAGE


def _quiet_unranked_saves() -> None:
  absl_logger = py_logging.getLogger('absl')  # orbax logs through absl.logging.
  if not any(isinstance(f, _UnrankedSaveFilter) for f in absl_logger.filters):
    absl_logger.addFilter(_UnrankedSaveFilter())


class Checkpointer:
  """Saves and restores (train state, extra JSON) in `<workdir>/checkpoints`.

  Generic over the state: any pytree of jax/numpy arrays (flax params, optax states including
  their NamedTuples, integer step counters). Store PRNG keys as raw key data
  (`jax.random.key_data(key)`, uint32) and re-wrap them after restoring.

  Usage:
    ckpt = Checkpointer(workdir, keep_latest=2, keep_best=1)
    if ckpt.latest_step() is not None:
      state, extra = ckpt.restore(jax.eval_shape(init_fn, rng))
    ...
    ckpt.save(step, state, {'next_index': 123}, metrics={'test_loss': 0.7})
    ckpt.close()  # Waits for the last asynchronous save.
  """

  def __init__(self, workdir: str | os.PathLike[str], *, keep_latest: int, keep_best: int,
               async_save: bool = True):
    if keep_latest < 1:
      raise ValueError(f'keep_latest={keep_latest} must be >= 1: resume needs the latest step.')
    _quiet_unranked_saves()
    if keep_best < 0:
      raise ValueError(f'keep_best={keep_best} must be >= 0.')
    self._directory = os.path.join(os.path.abspath(os.fspath(workdir)), CHECKPOINT_SUBDIR)
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep_latest),
        # reverse=True sorts descending and keeps the tail: the smallest test losses.
        checkpoint_managers.BestN(get_metric_fn=_best_metric, reverse=True, n=keep_best,
                                  keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        # Not for deletion (the policy decides): makes orbax write metrics to disk so BestN still
        # ranks old steps after a restart, and makes best_step() use the test loss.
        best_fn=_best_metric,
        best_mode='min',
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,  # Leftovers of a save interrupted by a kill.
        create=True,
    )
    self._manager = ocp.CheckpointManager(self._directory, options=options)

  @property
  def directory(self) -> str:
    return self._directory

  def save(self, step: int, state: PyTree, extra: Mapping[str, Any],
           metrics: Mapping[str, Any] | None = None, force: bool = False) -> bool:
    """Saves `state` and `extra` as step `step`; returns whether a checkpoint was started.

    Args:
      step: the training step the state is at.
      state: pytree of arrays (the train state).
      extra: small JSON-serialisable dict, e.g. {'next_index': 123, 'bad_steps': 0}.
      metrics: scalars of this step's evaluation; 'test_loss' ranks it for keep_best. None, or
        no finite 'test_loss': the step is kept only while it is among the latest.
      force: save even where orbax's save policy would skip the step (e.g. step <= latest).
        A step that is already saved is never overwritten (returns False).

    With async_save the write continues in the background after this returns; the arrays are
    copied to host memory first, so the caller may donate or overwrite them.
    """
    step = int(step)
    if step in self._manager.all_steps():
      logging.info('Checkpoint for step %d already exists; not saving again.', step)
      return False
    args = ocp.args.Composite(**{
        _STATE_ITEM: ocp.args.StandardSave(state),
        _EXTRA_ITEM: ocp.args.JsonSave(_to_json(extra, 'extra')),
    })
    return self._manager.save(step, args=args, metrics=_ranked_metrics(metrics), force=force)

  def restore(self, abstract_state: PyTree, *, step: int | None = None
              ) -> tuple[PyTree, dict[str, Any]]:
    """Restores (state, extra) of `step` (None: the latest).

    Args:
      abstract_state: the target's structure: jax.ShapeDtypeStruct leaves (from jax.eval_shape,
        with `sharding=` to place the restored arrays) or concrete arrays (their shape, dtype
        and sharding are used). Its treedef is what comes back, optax NamedTuples included.
      step: the step to restore; None restores the latest.

    Raises:
      FileNotFoundError: no checkpoint (of that step) in the directory.
    """
    self._manager.wait_until_finished()  # A step still being written is not restorable yet.
    if step is None:
      step = self._manager.latest_step()
      if step is None:
        raise FileNotFoundError(f'no checkpoint in {self._directory}')
    elif step not in self._manager.all_steps():
      raise FileNotFoundError(f'no checkpoint of step {step} in {self._directory}; saved steps: '
                              f'{self.all_steps()}')
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      restored = self._restore(step, target)
    except ValueError as e:
      if 'tree structures do not match' not in str(e) or not dataclasses.is_dataclass(target):
        raise
      # A checkpoint written before the state gained a field that holds no arrays here (e.g.
      # TrainState.prior_state, {} for most priors), or before a field was renamed (the
      # target's class lists them as RENAMED_FIELDS {new: old}): restore the fields it has.
      empty = {f.name for f in dataclasses.fields(target)
               if not jax.tree.leaves(getattr(target, f.name))}
      renamed = dict(getattr(type(target), 'RENAMED_FIELDS', {}))
      if not empty and not renamed:
        raise
      names = [f.name for f in dataclasses.fields(target)]
      # (the fields under their old names?, the empty fields left out) to try, in turn.
      attempts = ([(True, set()), (True, empty)] if renamed else []) + (
          [(False, empty)] if empty else [])
      for old_names, skip in attempts:
        as_saved = {n: renamed.get(n, n) if old_names else n for n in names if n not in skip}
        try:
          restored = self._restore(step, {as_saved[n]: getattr(target, n) for n in as_saved})
        except ValueError as again:
          if 'tree structures do not match' not in str(again):
            raise
          continue
        fields = {n: restored[_STATE_ITEM][as_saved[n]] for n in as_saved}
        return target.replace(**fields), dict(restored[_EXTRA_ITEM] or {})
      raise
    return restored[_STATE_ITEM], dict(restored[_EXTRA_ITEM] or {})

  def _restore(self, step: int, target: PyTree):
    return self._manager.restore(step, args=ocp.args.Composite(**{
        _STATE_ITEM: ocp.args.StandardRestore(target),
        _EXTRA_ITEM: ocp.args.JsonRestore(),
    }))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def best_step(self) -> int | None:
    """The step of smallest stored test loss; None if no step has one."""
    return self._manager.best_step()

  def metrics(self, step: int) -> dict[str, float] | None:
    """The metrics stored with `step`, None if it had no finite test loss."""
    return self._manager.metrics(step)

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases orbax's resources."""
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


class IncompatibleRunError(ValueError):
  """The workdir holds a run whose config differs at a key that must not change on resume."""


def _lookup(tree: Mapping[str, Any], dotted_key: str) -> Any:
  node: Any = tree
  for part in dotted_key.split('.'):
    if not isinstance(node, Mapping) or part not in node:
      return _MISSING
    node = node[part]
  return node


def _show(value: Any) -> str:
  return '<missing>' if value is _MISSING else repr(value)


def _config_to_json(config: ml_collections.ConfigDict) -> str:
  try:
    return config.to_json_best_effort(indent=2, sort_keys=True)
  except (TypeError, ValueError):  # E.g. keys that are not strings.
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=repr)


def check_or_write_run_config(workdir: str | os.PathLike[str], config: ml_collections.ConfigDict,
                              compatible_keys: Sequence[str],
                              defaults_of_added_keys: Mapping[str, Any] | None = None) -> bool:
  """Writes `<workdir>/config.json` on a workdir's first use, else checks `config` against it.

  Call before creating a Checkpointer or anything else that writes to `workdir`.

  Args:
    workdir: the run's directory (created if missing).
    config: this start's config.
    compatible_keys: dotted keys ('model.widths') that must equal the stored run's values to
      resume from its checkpoints. Other keys may change (e.g. num_train_steps to extend a run).
      Values are compared after a JSON round trip, so tuples equal lists.
    defaults_of_added_keys: compatible keys the config gained after runs were started, each
      with the value such runs had implicitly: a stored run without the key compares as that
      value (an older run stays resumable), any other missing key as '<missing>'.

  Returns:
    True if config.json was written (a new run), False if an existing one matched.

  Raises:
    IncompatibleRunError: listing each differing key with the stored and the new value; nothing
      in `workdir` is written or changed.
  """
  workdir = os.fspath(workdir)
  path = os.path.join(workdir, CONFIG_FILENAME)
  new_json = _config_to_json(config)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    new = json.loads(new_json)
    differences = []
    for key in compatible_keys:
      old_value, new_value = _lookup(old, key), _lookup(new, key)
      if old_value is _MISSING and key in (defaults_of_added_keys or {}):
        old_value = json.loads(json.dumps(defaults_of_added_keys[key]))
      if old_value != new_value:
        differences.append(f'  {key}: {_show(old_value)} in the run, {_show(new_value)} now')
    if differences:
      raise IncompatibleRunError(
          f'{path} belongs to a run whose config differs at keys that must not change on '
          'resume:\n' + '\n'.join(differences) +
          '\nUse another workdir, or set these keys back to the run\'s values.')
    return False
  if jax.process_index() == 0:  # One writer; other processes only compare.
    # Atomic: a kill never leaves a half-written config.
    cache.atomic_write(path, lambda f: f.write(new_json + '\n'))
  return True


class GracefulShutdown:
  """Turns SIGTERM and SIGINT into a flag the training loop polls, saving before it exits.

    with GracefulShutdown() as shutdown:
      for step in ...:
        ...
        if shutdown.requested:
          ckpt.save(step, state, extra, force=True)
          break

  A second SIGINT while a shutdown is pending raises KeyboardInterrupt (Ctrl-C twice forces
  out). Handlers are installed only in the main thread (Python allows no other); elsewhere the
  context does nothing but `request()` still works. The previous handlers are restored on exit.
  With several processes each sees only its own signals: agree on the flag (e.g. an all-gather)
  before acting on it, so that all processes save the same step.
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)):
    self._signals = tuple(signals)
    self._previous: dict[int, Any] = {}
    self._signum: int | None = None

  @property
  def requested(self) -> bool:
    return self._signum is not None

  @property
  def signal_name(self) -> str | None:
    """Name of the signal that requested the shutdown ('SIGTERM'), None if none did."""
    return None if self._signum is None else signal.Signals(self._signum).name

  def request(self, signum: int = signal.SIGTERM) -> None:
    """Requests a shutdown as if `signum` had arrived."""
    if self._signum is None:
      self._signum = signum

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    if self._signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.request(signum)
    logging.warning('Received %s: stopping after this step and saving a checkpoint.',
                    signal.Signals(signum).name)

  def __enter__(self) -> GracefulShutdown:
    if threading.current_thread() is threading.main_thread():
      for signum in self._signals:
        self._previous[signum] = signal.signal(signum, self._handle)
    else:
      logging.warning('GracefulShutdown outside the main thread: signals are not intercepted.')
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      # None: the previous handler was not installed from Python; the default is the best guess.
      signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    self._previous.clear()
