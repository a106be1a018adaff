"""TensorBoard writing and reading back without TensorFlow, progress lines."""

import os
import struct

import numpy as np
import pytest

from moe_ebm_jax import figures
from moe_ebm_jax import metric_logging as ml

from test_figures import _constant_tiles

# ----------------------------------------------------------------------------------------------
# MetricWriter and reading back.


def test_metric_writer_round_trips_scalars_and_images(tmp_path):
  logdir = str(tmp_path / 'tb')
  image = figures.image_grid(_constant_tiles(2, 2, 3, 3, 3), pad=1)
  grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
  with ml.MetricWriter(logdir) as writer:
    for step in (0, 10, 20):
      writer.write_scalars(step, {'loss': 1.0 / (step + 3), 'ebm/loss': np.float32(-step * 0.5),
                                  'lr': 3e-4})
    writer.write_images(10, {'samples': image, 'grey': grey})
    writer.write_images(20, {'samples': image})
    writer.flush()
  scalars = ml.read_scalars(logdir)
  assert set(scalars) == {'loss', 'ebm/loss', 'lr'}
  assert [s for s, _ in scalars['loss']] == [0, 10, 20]
  np.testing.assert_allclose([v for _, v in scalars['loss']], [1 / 3, 1 / 13, 1 / 23], rtol=1e-6)
  np.testing.assert_allclose([v for _, v in scalars['ebm/loss']], [0.0, -5.0, -10.0])
  np.testing.assert_allclose([v for _, v in scalars['lr']], [3e-4] * 3, rtol=1e-6)
  assert ml.read_image_tags(logdir) == {'samples', 'grey'}
  images = ml.read_images(logdir)
  assert [s for s, _ in images['samples']] == [10, 20]
  np.testing.assert_array_equal(images['samples'][0][1], image)  # PNG is lossless.
  np.testing.assert_array_equal(images['grey'][0][1][..., 0], grey)  # Stored as RGB.


def test_read_scalars_spans_files_in_order(tmp_path):
  logdir = str(tmp_path)
  for start in (0, 5):  # A resumed run writes a second event file.
    writer = ml.MetricWriter(logdir)
    writer.write_scalars(start, {'x': start})
    writer.write_scalars(start + 1, {'x': start + 1})
    writer.close()
  assert len(ml.event_files(logdir)) == 2  # Even within one second: no file is overwritten.
  assert ml.read_scalars(logdir) == {'x': [(0, 0.0), (1, 1.0), (5, 5.0), (6, 6.0)]}


def test_read_tolerates_truncated_tail_and_detects_corruption(tmp_path):
  logdir = str(tmp_path)
  with ml.MetricWriter(logdir) as writer:
    writer.write_scalars(1, {'a': 1.5})
    writer.write_scalars(2, {'a': 2.5})
  (path,) = ml.event_files(logdir)
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:  # Drop half of the last record, as if still being written.
    f.write(data[:-10])
  assert ml.read_scalars(logdir) == {'a': [(1, 1.5)]}
  corrupt = bytearray(data)
  (first_length,) = struct.unpack('<Q', data[:8])
  corrupt[12 + first_length // 2] ^= 0xFF  # A byte inside the first record's data.
  with open(path, 'wb') as f:
    f.write(bytes(corrupt))
  with pytest.raises(ml.EventFileError):
    ml.read_scalars(logdir)


def test_disabled_writer_creates_nothing(tmp_path):
  logdir = tmp_path / 'never'
  writer = ml.MetricWriter(str(logdir), enabled=False)
  writer.write_scalars(1, {'loss': 1.0})
  writer.write_images(1, {'samples': np.zeros((4, 4, 3), np.uint8)})
  writer.flush()
  writer.close()
  assert not logdir.exists()
  assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# ProgressLogger / format_duration.


class FakeClock:

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


@pytest.fixture
def log_lines(monkeypatch):
  lines = []
  monkeypatch.setattr(ml.logging, 'info', lambda fmt, *args: lines.append(fmt % args))
  return lines


def test_progress_logger_rate_eta_and_line(log_lines):
  clock = FakeClock()
  progress = ml.ProgressLogger(100, batch_size=32, every_steps=10, every_seconds=None,
                               clock=clock)
  for step in range(1, 10):
    clock.now += 0.5
    assert progress.update(step, {'loss': 1.0}) is None
  assert not log_lines
  clock.now += 0.5
  result = progress.update(10, {'loss': np.float32(123.4), 'ebm_loss': 0.012})
  assert result['steps_per_sec'] == pytest.approx(2.0)  # 10 steps in 5 s.
  assert result['eta_sec'] == pytest.approx(45.0)  # 90 steps left at 2 steps/s.
  assert result['examples_per_sec'] == pytest.approx(64.0)
  assert log_lines == ['step 10/100 | loss 123.4 | ebm_loss 0.012 | 2 steps/s | ETA 45s']
  # The next rate is measured since the last line only: 10 steps in 2 s.
  clock.now += 2.0
  result = progress.update(20, {'loss': 2.0})
  assert result['steps_per_sec'] == pytest.approx(5.0)
  assert result['eta_sec'] == pytest.approx(16.0)
  assert result['examples_per_sec'] == pytest.approx(160.0)  # For TensorBoard, not the line.
  assert log_lines[-1].endswith('| loss 2 | 5 steps/s | ETA 16s')


def test_progress_logger_time_trigger_start_step_and_final_step(log_lines):
  clock = FakeClock()
  progress = ml.ProgressLogger(1000, start_step=500, every_steps=None, every_seconds=60.0,
                               clock=clock)
  clock.now += 59.0
  assert progress.update(510) is None
  clock.now += 1.0
  result = progress.update(520)
  assert result['steps_per_sec'] == pytest.approx(20 / 60)  # Counted from start_step.
  assert result['eta_sec'] == pytest.approx(480 * 3.0)
  assert 'examples_per_sec' not in result and 'ex/s' not in log_lines[-1]
  assert log_lines[-1] == 'step 520/1000 | 0.333 steps/s | ETA 24m00s'
  assert progress.update(520) is None  # Same step again: nothing.
  clock.now += 1.0
  result = progress.update(1000)  # The final step always logs.
  assert result['eta_sec'] == 0.0 and log_lines[-1].endswith('ETA 0s')


def test_progress_logger_eta_excludes_the_compiling_first_step(log_lines):
  """A 41 s first step (compilation) then 3 s per step: the ETA is the remaining steps times
  3 s, not a rate diluted by the compilation."""
  clock = FakeClock()
  progress = ml.ProgressLogger(1000, every_steps=20, every_seconds=None, clock=clock)
  clock.now += 41.0
  assert progress.mark_compiled(1) == pytest.approx(41.0)
  for step in range(2, 61):
    clock.now += 3.0
    result = progress.update(step, {'loss': 1.0})
    if step % 20:
      assert result is None
    else:
      assert result['eta_sec'] == pytest.approx((1000 - step) * 3.0)
      assert result['steps_per_sec'] == pytest.approx(1 / 3)
  assert [line.split(' | ')[-1] for line in log_lines] == ['ETA 49m00s', 'ETA 48m00s',
                                                            'ETA 47m00s']
  # A pause (an evaluation) inside the next interval: the interval's rate shows it, and the ETA
  # takes it at its share of every step since compilation (59 steps in 177 s + 20 in 90 s).
  clock.now += 30.0 + 20 * 3.0
  result = progress.update(80, {'loss': 1.0})
  assert result['steps_per_sec'] == pytest.approx(20 / 90)
  assert result['eta_sec'] == pytest.approx(920 * (177 + 90) / 79)


def test_progress_logger_step_trigger_crosses_multiples(log_lines):
  clock = FakeClock()
  progress = ml.ProgressLogger(10_000, every_steps=100, every_seconds=None, clock=clock)
  logged = []
  for step in range(7, 400, 7):  # Called every 7 steps: never exactly on a multiple of 100.
    clock.now += 1.0
    if progress.update(step) is not None:
      logged.append(step)
  assert logged == [105, 203, 301]
  assert len(log_lines) == 3


@pytest.mark.parametrize('seconds, expected', [
    (0, '0s'), (12.4, '12s'), (59.4, '59s'), (59.6, '1m00s'), (245, '4m05s'), (3599, '59m59s'),
    (3600, '1h00m'), (3 * 3600 + 27 * 60 + 10, '3h27m'), (86400 + 3 * 3600, '1d03h'),
    (-5, '0s'), (float('inf'), '?'), (float('nan'), '?')])
def test_format_duration(seconds, expected):
  assert ml.format_duration(seconds) == expected


@pytest.mark.parametrize('value, expected', [
    (123.4, '123.4'), (-0.048391, '-0.04839'), (10907.3, '10,907'), (-2169.0, '-2,169'),
    (1.2e7, '1.2e+07'), (3, '3'), (float('nan'), 'nan'), ('text', 'text')])
def test_format_value(value, expected):
  assert ml.format_value(value) == expected
