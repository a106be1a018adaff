"""Small helpers for the trainer's logs: TensorBoard writing and reading, progress.

- `MetricWriter` writes scalars and images to TensorBoard event files with tensorboardX; with
  `enabled=False` it does nothing, so only process 0 writes in multi-host runs.
- `ProgressLogger` emits one absl log line every so many steps or seconds, with the step rate,
  examples per second and ETA measured over the interval since its last line.
- `read_scalars` / `read_images` / `read_image_tags` read event files back without TensorFlow,
  from the TFRecord framing and tensorboardX's bundled protobufs (for tests and reports).

tensorboardX is imported only by the functions that need it.
"""

from __future__ import annotations

import io
import math
import os
import struct
import time
from typing import Any, Callable, Iterator, Mapping

import numpy as np
from absl import logging
from PIL import Image

from moe_ebm_jax import figures


class EventFileError(ValueError):
  """A corrupt TensorBoard event file (bad record checksum)."""


# ----------------------------------------------------------------------------------------------
# Writing TensorBoard summaries.


class MetricWriter:
  """Scalars and images to TensorBoard event files in `logdir`; a no-op when not `enabled`.

  Values may be Python numbers, NumPy or JAX scalars. Tags with characters TensorBoard does not
  allow are rewritten by tensorboardX (to '_').
  """

  def __init__(self, logdir: str, enabled: bool = True, flush_secs: int = 60):
    self.logdir = logdir
    self.enabled = enabled
    self._writer = None
    if enabled:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      # tensorboardX names files by the second and opens them 'wb': without a finer suffix a
      # writer reopened within the same second (a quick restart) would wipe the earlier file.
      self._writer = tensorboardX.SummaryWriter(logdir=logdir, flush_secs=flush_secs,
                                                filename_suffix=f'.{time.time_ns()}')

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if self._writer is None:
      return
    for tag, value in scalars.items():
      self._writer.add_scalar(tag, float(value), global_step=int(step))

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """Writes uint8 (H, W) or (H, W, C) images, C in {1, 3, 4} (floats in [0, 1] are rounded)."""
    if self._writer is None:
      return
    for tag, image in images.items():
      # Our rounding, not tensorboardX's: it truncates floats (x * 255).astype(uint8).
      image = figures.to_uint8(image)
      if image.ndim not in (2, 3):
        raise ValueError(f'image {tag!r}: expected (H, W[, C]), got shape {image.shape}.')
      self._writer.add_image(tag, image, global_step=int(step),
                             dataformats='HW' if image.ndim == 2 else 'HWC')

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


# ----------------------------------------------------------------------------------------------
# Progress lines.


def format_duration(seconds: float) -> str:
  """Compact duration: '12s', '4m05s', '3h27m', '2d03h'; '?' when not finite."""
  if not math.isfinite(seconds):
    return '?'
  s = int(round(max(seconds, 0.0)))
  if s < 60:
    return f'{s}s'
  if s < 3600:
    return f'{s // 60}m{s % 60:02d}s'
  minutes = int(round(s / 60))
  if minutes < 24 * 60:
    return f'{minutes // 60}h{minutes % 60:02d}m'
  hours = int(round(s / 3600))
  return f'{hours // 24}d{hours % 24:02d}h'


def format_value(value: Any) -> str:
  """4 significant digits; 1,000 <= |x| < 1e7 as a whole number with commas (no exponent)."""
  try:
    x = float(value)
  except (TypeError, ValueError):
    return str(value)
  if math.isfinite(x) and 1e3 <= abs(x) < 1e7:
    return f'{x:,.0f}'
  return '%.4g' % x


def _format_rate(rate: float) -> str:
  return f'{rate:.3g}' if rate < 1000 else f'{rate:.0f}'  # No '1.23e+03 steps/s'.


class ProgressLogger:
  """Logs one absl line with metrics, step rate and ETA every so often.

  A line is due when `step` crosses a multiple of `every_steps`, when `every_seconds` have passed
  since the last line, or at `total_steps`. The shown steps/s is measured over the interval since
  the last line. The ETA is the remaining steps over the rate since `mark_compiled` (the end of
  the first, compiling step), so compilation never counts as training time; before any
  `mark_compiled` it uses the interval's rate.

  Metrics are converted to float only when a line is due, so device arrays may be passed every
  step without forcing a device sync on the other steps.
  """

  def __init__(self, total_steps: int, start_step: int = 0, *, batch_size: int | None = None,
               every_steps: int | None = 100, every_seconds: float | None = 60.0,
               clock: Callable[[], float] = time.monotonic):
    """Constructs the logger.

    Args:
      total_steps: the step the run ends at.
      start_step: the step the run starts (or resumes) from.
      batch_size: examples per step (global, across hosts), for the ex/s figure; None omits it.
      every_steps: log when the step crosses a multiple of this; None for no step trigger.
      every_seconds: log when this much time has passed since the last line; None for none.
      clock: seconds as a float, monotonic (injectable for tests).
    """
    if every_steps is not None and every_steps < 1:
      raise ValueError(f'every_steps must be >= 1 or None, got {every_steps}.')
    self.total_steps = int(total_steps)
    self.batch_size = batch_size
    self.every_steps = every_steps
    self.every_seconds = every_seconds
    self._clock = clock
    self._start_time = clock()
    self._last_step = int(start_step)
    self._last_time = self._start_time
    self._origin: tuple[int, float] | None = None  # (step, time) at the end of compilation.

  def mark_compiled(self, step: int) -> float:
    """Call once `step` (the first of this run) has completed; returns the seconds it took.

    Rates and the ETA are then measured from here: the first step's compilation is excluded.
    """
    now = self._clock()
    self._origin = (int(step), now)
    self._last_step, self._last_time = int(step), now
    return now - self._start_time

  def _due(self, step: int, now: float) -> bool:
    if step >= self.total_steps:
      return True
    if self.every_steps is not None and (
        step // self.every_steps > self._last_step // self.every_steps):
      return True
    return self.every_seconds is not None and now - self._last_time >= self.every_seconds

  def eta(self, step: int, now: float) -> float:
    """Seconds left at `step` and time `now`: remaining steps / the rate since compilation."""
    remaining = max(self.total_steps - int(step), 0)
    if remaining == 0:
      return 0.0
    since_step, since = self._origin or (self._last_step, self._last_time)
    elapsed, done = now - since, int(step) - since_step
    if done <= 0 or elapsed <= 0:
      return math.inf
    return remaining * elapsed / done

  def update(self, step: int, metrics: Mapping[str, Any] | None = None
             ) -> dict[str, float] | None:
    """Call after each step (or every few); logs when due.

    Args:
      step: the number of steps completed.
      metrics: name -> scalar, shown in insertion order.

    Returns:
      When a line was logged, {'steps_per_sec', 'eta_sec'} (and 'examples_per_sec' with a
      batch_size), for TensorBoard; else None.
    """
    step = int(step)
    now = self._clock()
    if step <= self._last_step or not self._due(step, now):
      return None
    elapsed = now - self._last_time
    steps_per_sec = (step - self._last_step) / elapsed if elapsed > 0 else math.inf
    eta_sec = self.eta(step, now)
    result = {'steps_per_sec': steps_per_sec, 'eta_sec': eta_sec}
    if self.batch_size is not None:
      result['examples_per_sec'] = steps_per_sec * self.batch_size
    parts = [f'step {step}/{self.total_steps}']
    parts += [f'{name} {format_value(value)}' for name, value in (metrics or {}).items()]
    parts.append(f'{_format_rate(steps_per_sec)} steps/s')
    parts.append(f'ETA {format_duration(eta_sec)}')
    logging.info('%s', ' | '.join(parts))
    self._last_step, self._last_time = step, now
    return result


# ----------------------------------------------------------------------------------------------
# Reading event files back (no TensorFlow).


def _masked_crc32c(data: bytes) -> int:
  from tensorboardX.crc32c import crc32c  # pylint: disable=g-import-not-at-top
  x = crc32c(data) & 0xffffffff
  return (((x >> 15) | (x << 17)) + 0xa282ead8) & 0xffffffff


def _read_records(path: str) -> Iterator[bytes]:
  """TFRecords: uint64 length, masked crc32c of it, data, masked crc32c of data (little-endian).

  A truncated last record (a writer still running) ends the file quietly; a checksum mismatch
  raises EventFileError.
  """
  with open(path, 'rb') as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        return
      (length,), (length_crc,) = struct.unpack('<Q', header[:8]), struct.unpack('<I', header[8:])
      if length_crc != _masked_crc32c(header[:8]):
        raise EventFileError(f'{path}: bad length checksum at offset {f.tell() - 12}.')
      data = f.read(length)
      footer = f.read(4)
      if len(data) < length or len(footer) < 4:
        return
      if struct.unpack('<I', footer)[0] != _masked_crc32c(data):
        raise EventFileError(f'{path}: bad data checksum at offset {f.tell() - length - 4}.')
      yield data


def event_files(logdir: str) -> list[str]:
  """The event files directly in `logdir`, oldest first (their names start with a timestamp)."""
  names = sorted(n for n in os.listdir(logdir) if 'tfevents' in n)
  return [os.path.join(logdir, n) for n in names if os.path.isfile(os.path.join(logdir, n))]


def _summary_values(logdir: str) -> Iterator[tuple[int, Any]]:
  """(step, Summary.Value) of every event in `logdir`, in file order then write order."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  for path in event_files(logdir):
    for record in _read_records(path):
      event = event_pb2.Event.FromString(record)
      if event.HasField('summary'):
        for value in event.summary.value:
          yield event.step, value


_TENSOR_DTYPES = {1: np.float32, 2: np.float64}  # TensorFlow DataType enum: DT_FLOAT, DT_DOUBLE.


def _tensor_scalar(tensor: Any) -> float | None:
  if tensor.float_val:
    return float(tensor.float_val[0])
  if tensor.double_val:
    return float(tensor.double_val[0])
  if tensor.tensor_content and tensor.dtype in _TENSOR_DTYPES:
    return float(np.frombuffer(tensor.tensor_content, _TENSOR_DTYPES[tensor.dtype])[0])
  return None


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value)] of the scalar summaries in `logdir`'s event files.

  Entries are in file order (oldest file first) then write order, so a resumed run that rewrote
  some steps lists them twice, the newer last. Values are float32 as stored (simple_value), or
  the tensor of a 'scalars'-plugin summary.
  """
  scalars: dict[str, list[tuple[int, float]]] = {}
  for step, value in _summary_values(logdir):
    kind = value.WhichOneof('value')
    if kind == 'simple_value':
      number = float(value.simple_value)
    elif kind == 'tensor' and value.metadata.plugin_data.plugin_name == 'scalars':
      number = _tensor_scalar(value.tensor)
      if number is None:
        continue
    else:
      continue
    scalars.setdefault(value.tag, []).append((int(step), number))
  return scalars


def read_images(logdir: str) -> dict[str, list[tuple[int, np.ndarray]]]:
  """tag -> [(step, uint8 (H, W, C) image)] of the image summaries in `logdir`, as read_scalars."""
  images: dict[str, list[tuple[int, np.ndarray]]] = {}
  for step, value in _summary_values(logdir):
    if value.WhichOneof('value') == 'image':
      with Image.open(io.BytesIO(value.image.encoded_image_string)) as image:
        array = np.asarray(image)
      if array.ndim == 2:
        array = array[..., None]
      images.setdefault(value.tag, []).append((int(step), array))
  return images


def read_image_tags(logdir: str) -> set[str]:
  """The tags that have image summaries in `logdir`'s event files."""
  return {value.tag for _, value in _summary_values(logdir) if value.WhichOneof('value') == 'image'}
