"""What the command line's log shows: this library's lines, dependencies' warnings and errors.

orbax, grain, TensorFlow Datasets and JAX log through absl or Python logging at INFO by the dozen
per checkpoint (options dumped whole, handler registries, temporary paths). `setup` hides their
records below WARNING, TFDS's progress bars, and shortens absl's prefix to the time of day;
`setup(debug=True)` changes nothing (main.py's --debug_logs). A record is a dependency's when the
file that logged it lies inside one of DEPENDENCY_PACKAGES.
"""

from __future__ import annotations

import logging
import os
import re

from absl import logging as absl_logging

# Top-level packages whose INFO (and DEBUG) records are hidden unless asked for.
DEPENDENCY_PACKAGES = ('orbax', 'grain', 'tensorflow_datasets', 'jax', 'jaxlib', 'flax', 'optax',
                       'etils', 'array_record', 'tensorstore')
# Dependencies' warnings about what this library does on purpose, hidden too (regular
# expressions, matched at the start of the message): checkpointing.py saves the steps between
# evaluations without metrics (they are kept as latest, not ranked); TFDS finds the folder of a
# dataset that input_pipeline is about to build (and logs so) without its dataset_info.json;
# TFDS warns of every PolyMNIST config but the default one (M = 5, seed 0), which polymnist.py
# makes on purpose from the config (other M, seeds, backgrounds).
EXPECTED_WARNINGS = (r'Requested `tracked_metric`; did not provide metrics\.$',
                     r'Variant folder .* has no dataset_info\.json$',
                     r'Using custom data configuration: PolymnistConfig\(')


class DependencyInfoFilter(logging.Filter):
  """Drops records below WARNING, and EXPECTED_WARNINGS, logged from a file inside one of
  `packages`."""

  def __init__(self, packages=DEPENDENCY_PACKAGES, expected_warnings=EXPECTED_WARNINGS):
    super().__init__()
    self._markers = tuple(f'{os.sep}{name}{os.sep}' for name in packages)
    self._expected = re.compile('|'.join(f'(?:{e})' for e in expected_warnings))

  def filter(self, record: logging.LogRecord) -> bool:
    if not any(marker in (record.pathname or '') for marker in self._markers):
      return True
    if record.levelno >= logging.ERROR:
      return True
    if record.levelno >= logging.WARNING:
      return not self._expected.match(record.getMessage())
    return False


class ShortFormatter(logging.Formatter):
  """'07:23:25 message'; warnings and errors keep their level: '07:23:25 WARNING message'."""

  def __init__(self):
    super().__init__('%(asctime)s %(message)s', datefmt='%H:%M:%S')

  def format(self, record: logging.LogRecord) -> str:
    text = super().format(record)
    if record.levelno >= logging.WARNING:
      time_of_day, _, message = text.partition(' ')
      text = f'{time_of_day} {record.levelname} {message}'
    return text


def setup(debug: bool = False) -> None:
  """Quiets dependencies and shortens the prefix of absl's handler (no-op with debug=True).

  Call once at the start of a command line program, after absl's app.run has installed its
  handler; the filter sits on the handlers, so loggers created later are covered too.
  """
  if debug:
    return
  handler = absl_logging.get_absl_handler()
  # Filters act in Handler.handle: on absl's handler (it hands records to its python_handler's
  # emit, which runs none) and on any other handler of the root logger.
  log_filter = DependencyInfoFilter()
  for h in {handler, *logging.getLogger().handlers}:
    if not any(isinstance(f, DependencyInfoFilter) for f in h.filters):
      h.addFilter(log_filter)
  handler.python_handler.setFormatter(ShortFormatter())
  # TFDS draws tqdm bars while it builds a dataset; input_pipeline logs the build instead.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.display_progress_bar(False)


_ENSURED = []


def ensure_visible() -> None:
  """In a script (no absl app, so absl logs only warnings), the first call of the library's
  entry points (train.train_and_evaluate, evaluation.evaluate_run) shows its progress lines as
  main.py does: INFO on stderr, dependencies quiet. Once per process; under main.py, or after
  the script set absl's verbosity itself, it changes nothing. Silence it again with
  absl.logging.set_verbosity(absl.logging.WARNING)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if _ENSURED or flags.FLAGS.is_parsed():
    return
  _ENSURED.append(True)
  if absl_logging.get_verbosity() != absl_logging.WARNING:  # Set by the script: its choice.
    return
  # Flags at their defaults, as an absl app would parse them: absl's handler then logs without
  # its 'Logging before flag parsing' notice (grain's workers read the flags too).
  flags.FLAGS.mark_as_parsed()
  absl_logging.set_verbosity(absl_logging.INFO)
  absl_logging.use_absl_handler()
  setup()
