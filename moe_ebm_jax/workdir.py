"""A run's workdir as evaluation and the scripts read it: its latest checkpoint restored (with the
run's config checked), the step its evaluation holds, and metrics.json written whole."""

from __future__ import annotations

import json
import os
from typing import Any

import jax

from moe_ebm_jax import cache
from moe_ebm_jax import checkpointing
from moe_ebm_jax import model_state
from moe_ebm_jax import parallel


def restore_latest(config, workdir: str) -> tuple[model_state.Model, Any]:
  """(model, model_state.TrainState) of the latest checkpoint in `workdir`, read-only.

  The config must match the run's at model_state.COMPATIBLE_KEYS (as for a resume); sampler
  settings such as ebm.posterior_steps may differ (that is how a trained model is probed with
  others).
  """
  if os.path.exists(os.path.join(workdir, checkpointing.CONFIG_FILENAME)):
    # The model must be the one that was trained (same keys as a resume); nothing is written.
    checkpointing.check_or_write_run_config(
        workdir, config, model_state.COMPATIBLE_KEYS, model_state.ADDED_KEY_DEFAULTS)
  if not os.path.isdir(os.path.join(workdir, checkpointing.CHECKPOINT_SUBDIR)):
    # Said before orbax starts (it would create the folder and leave a thread behind).
    raise FileNotFoundError(f'no checkpoint in {workdir}: train first (--mode=train).')
  model = model_state.make_model(config)
  abstract = model_state.abstract_state(config, model, parallel.make_mesh())
  with checkpointing.Checkpointer(workdir, keep_latest=config.keep_checkpoints,
                                  keep_best=config.keep_best_checkpoints) as ckpt:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f'no checkpoint in {workdir}: train first (--mode=train).')
    state, _ = ckpt.restore(abstract)
  return model, state


def evaluated_step(workdir: str) -> int | None:
  """The step whose whole evaluation <workdir>/eval/metrics.json holds; None if there is none
  (or it is unreadable, or an evaluation that stopped part way)."""
  try:
    with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
      metrics = json.load(f)
    return int(metrics['step']) if metrics.get('complete', True) else None
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return None


def write_metrics(out_dir: str, metrics: dict[str, Any]) -> None:
  """<out_dir>/metrics.json, replaced whole (process 0 only): a reader never sees half a file."""
  if jax.process_index():
    return
  cache.atomic_write(os.path.join(out_dir, 'metrics.json'),
                     lambda f: json.dump(metrics, f, indent=2, sort_keys=True), 'w')
