"""Data parallelism: a 1-D device mesh, and global arrays from each process's local data.

Params and optimiser states are replicated (NamedSharding(mesh, P())); batches are split over
the mesh axis 'data' (P('data')). The same code runs on one CPU, every GPU of a host, or a TPU
pod (multi-host: jax.distributed.initialize, each process feeding its own rows).
"""

from __future__ import annotations

import jax
import numpy as np


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over `devices` (default: every device of every process), axis 'data'."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def check_batch_divides(batch_sizes: dict[str, int], num_devices: int) -> None:
  """Raises ValueError naming the config key whose batch size does not split over the devices.
  batch_sizes: {config key: size}, e.g. {'batch_size': 128, 'eval_batch_size': 256}."""
  for key, size in batch_sizes.items():
    if size % num_devices:
      raise ValueError(f'config.{key}={size} does not divide over {num_devices} devices; '
                       f'use a multiple of {num_devices}.')


def global_batch(local_rows, sharding):
  """This process's rows (an array, or a pytree of arrays such as a batch's {name: array})
  -> global arrays split over the mesh."""
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a), local_rows)


def replicate(value, sharding):
  """A host value every process holds identically (e.g. a PRNG key, or a pytree of arrays) ->
  replicated arrays."""
  return jax.tree.map(
      lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), value)
