"""Image grids, labelled figures, TensorBoard writing and reading back without TensorFlow, progress lines."""

import os
import struct

import numpy as np
import pytest
from PIL import Image

from moe_ebm_jax import metric_logging as ml


# ----------------------------------------------------------------------------------------------
# image_grid / save_png.


def _constant_tiles(rows, cols, h, w, c):
  """Tile (r, k) is constant (10 * r + k + 1) / 255, so every tile has its own uint8 value."""
  values = (10 * np.arange(rows)[:, None] + np.arange(cols)[None, :] + 1) / 255.0
  return np.broadcast_to(values[:, :, None, None, None], (rows, cols, h, w, c)).copy()


@pytest.mark.parametrize('pad', [0, 1, 3])
def test_image_grid_places_tiles_and_padding(pad):
  rows, cols, h, w, c = 2, 3, 4, 5, 3
  grid = ml.image_grid(_constant_tiles(rows, cols, h, w, c), pad=pad, pad_value=0.0)
  assert grid.dtype == np.uint8
  assert grid.shape == (rows * (h + pad) + pad, cols * (w + pad) + pad, c)
  covered = np.zeros(grid.shape[:2], bool)
  for r in range(rows):
    for k in range(cols):
      top, left = pad + r * (h + pad), pad + k * (w + pad)
      np.testing.assert_array_equal(grid[top:top + h, left:left + w], 10 * r + k + 1)
      covered[top:top + h, left:left + w] = True
  assert (grid[~covered] == 0).all()  # Everything else is padding.
  assert (~covered).sum() == grid.shape[0] * grid.shape[1] - rows * cols * h * w


def test_image_grid_padding_value_and_lines():
  grid = ml.image_grid(np.zeros((1, 2, 2, 2, 1)), pad=1, pad_value=1.0)
  expected = np.array([[255, 255, 255, 255, 255, 255, 255],
                       [255, 0, 0, 255, 0, 0, 255],
                       [255, 0, 0, 255, 0, 0, 255],
                       [255, 255, 255, 255, 255, 255, 255]], np.uint8)
  np.testing.assert_array_equal(grid[..., 0], expected)
  half = ml.image_grid(np.zeros((1, 1, 1, 1, 3)), pad=1, pad_value=0.5)
  assert half[0, 0].tolist() == [128, 128, 128] and half[1, 1].tolist() == [0, 0, 0]


def test_image_grid_rounds_and_clips():
  eps = 1e-3
  values = np.array([(0.5 - eps) / 255, (0.5 + eps) / 255, (254.5 - eps) / 255,
                     (254.5 + eps) / 255, 254.9 / 255, 100.4 / 255, 100.6 / 255,
                     -0.3, 1.7, np.nan, np.inf, -np.inf])
  grid = ml.image_grid(values.reshape(1, -1, 1, 1, 1), pad=0)
  assert grid[0, :, 0].tolist() == [0, 1, 254, 255, 255, 100, 101, 0, 255, 0, 255, 0]
  # uint8 input passes through unchanged.
  raw = np.arange(6, dtype=np.uint8).reshape(1, 6, 1, 1, 1)
  assert ml.image_grid(raw, pad=0)[0, :, 0].tolist() == list(range(6))


def test_image_grid_flat_input_fills_blank_tiles():
  n, cols, h, w = 7, 3, 2, 2
  tiles = (np.arange(1, n + 1) / 255.0)[:, None, None, None] * np.ones((n, h, w, 1))
  grid = ml.image_grid(tiles, pad=1, pad_value=1.0, cols=cols)
  rows = 3  # ceil(7 / 3).
  assert grid.shape == (rows * (h + 1) + 1, cols * (w + 1) + 1, 1)
  for i in range(rows * cols):
    r, k = divmod(i, cols)
    tile = grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + k * (w + 1):1 + k * (w + 1) + w]
    np.testing.assert_array_equal(tile, i + 1 if i < n else 255)  # Blank = pad value.
  # Same layout as the equivalent 5-D input.
  padded = np.concatenate([tiles, np.ones((2, h, w, 1))]).reshape(rows, cols, h, w, 1)
  np.testing.assert_array_equal(grid, ml.image_grid(padded, pad=1, pad_value=1.0))
  # Exactly divisible: no extra row.
  assert ml.image_grid(tiles[:6], pad=0, cols=3).shape == (2 * h, 3 * w, 1)


def test_image_grid_rejects_bad_shapes():
  with pytest.raises(ValueError):
    ml.image_grid(np.zeros((4, 2, 2, 1)))  # (N, H, W, C) needs cols.
  with pytest.raises(ValueError):
    ml.image_grid(np.zeros((2, 2, 2)), cols=1)
  with pytest.raises(ValueError):
    ml.image_grid(np.zeros((2, 3, 2, 2, 1)), cols=2)


@pytest.mark.parametrize('channels', [1, 3])
def test_save_png_round_trips(tmp_path, channels):
  grid = ml.image_grid(np.random.default_rng(0).random((2, 3, 4, 4, channels)), pad=1)
  path = str(tmp_path / 'sub' / 'grid.png')
  ml.save_png(path, grid)
  with Image.open(path) as image:
    back = np.asarray(image)
  np.testing.assert_array_equal(back.reshape(grid.shape), grid)


# ----------------------------------------------------------------------------------------------
# labelled_grid.


def _dark(pixels):
  """Whether any pixel is drawn (text is black, anti-aliased grey, on white)."""
  return bool((np.asarray(pixels) < 128).any())


def _grid_shape(rows, cols, h, w, scale, pad):
  return rows * (scale * h + pad) + pad, cols * (scale * w + pad) + pad


@pytest.mark.parametrize('channels', [1, 3])
def test_labelled_grid_places_upscaled_tiles_under_bands(channels):
  rows, cols, h, w, scale, pad = 2, 3, 5, 4, 2, 2
  tiles = np.random.default_rng(0).random((rows, cols, h, w, channels))
  figure = ml.labelled_grid(tiles, title='A title', col_labels=['a', 'b', 'c'],
                            row_labels=['row 1', 'row 2'], scale=scale, pad=pad)
  assert figure.dtype == np.uint8 and figure.ndim == 3 and figure.shape[-1] == 3
  grid_h, grid_w = _grid_shape(rows, cols, h, w, scale, pad)
  top, left = figure.shape[0] - grid_h, figure.shape[1] - grid_w
  assert top > 20 and left > 10  # A title band, a label band and a row-label margin.
  expected = ml.to_uint8(tiles)
  for r in range(rows):
    for k in range(cols):
      y, x = top + pad + r * (scale * h + pad), left + pad + k * (scale * w + pad)
      # Nearest-neighbour: every input pixel becomes a scale x scale block, in every channel.
      upscaled = np.kron(expected[r, k], np.ones((scale, scale, 1), np.uint8))
      np.testing.assert_array_equal(figure[y:y + scale * h, x:x + scale * w],
                                    np.broadcast_to(upscaled, (scale * h, scale * w, 3)))
  # The grid region is exactly the bare grid: text never lands on tiles or padding.
  bare = ml.labelled_grid(tiles, title='', scale=scale, pad=pad)
  assert bare.shape == (grid_h, grid_w, 3)
  np.testing.assert_array_equal(figure[top:, left:], bare)


def test_labelled_grid_draws_title_and_every_label_in_its_band():
  rows, cols, h, w = 3, 4, 28, 28
  tiles = np.zeros((rows, cols, h, w, 3))
  grid_h, grid_w = _grid_shape(rows, cols, h, w, 2, 2)
  plain = ml.labelled_grid(tiles, title='')
  assert plain.shape == (grid_h, grid_w, 3)  # No title: no band at all.
  titled = ml.labelled_grid(tiles, title='Joint samples')
  band = titled.shape[0] - grid_h
  assert band > 0 and titled.shape[1] == grid_w
  assert _dark(titled[:band]) and not _dark(titled[:, :2])  # Drawn, with a white margin.
  assert not np.array_equal(titled[:band], ml.labelled_grid(tiles, title='Other words')[:band])
  # A title wider than the figure wraps onto more lines: taller, never wider.
  long = ml.labelled_grid(tiles, title=' '.join(['word'] * 40))
  assert long.shape[0] > titled.shape[0] and long.shape[1] == grid_w
  full = ml.labelled_grid(tiles, title='T', col_labels=[f'm{k}' for k in range(cols)],
                          row_labels=[f'chain {r + 1}' for r in range(rows)])
  top, left = full.shape[0] - grid_h, full.shape[1] - grid_w
  labels = full[band:top, left:]
  assert top > band and _dark(labels)
  for k in range(cols):  # Each column's label sits above that column.
    x = 2 + k * (56 + 2)
    assert _dark(labels[:, x:x + 56]), k
  for r in range(rows):  # Each row's label sits beside that row.
    y = top + 2 + r * (56 + 2)
    assert _dark(full[y:y + 56, :left]), r
  assert not _dark(full[top:top + 2, :left])  # Nothing beside the top padding line.


def test_title_wrap_keeps_lone_symbols_with_their_words():
  font = ml._font(12)  # pylint: disable=protected-access
  wrap = lambda text, width: ml._wrap(text, font, width)  # pylint: disable=protected-access
  assert wrap('z ~ q(z | x_m0), w ~ p(w)', 1) == ['z ~ q(z | x_m0),', 'w ~ p(w)']
  assert wrap('one two three', 10_000) == ['one two three'] and wrap('', 100) == []
  lines = wrap(' '.join(['word'] * 30), 100)
  assert len(lines) > 1 and all(ml._text_width(font, l) <= 100 for l in lines)  # pylint: disable=protected-access


def test_labelled_grid_uint8_and_float_agree_and_scale_one_is_the_grid():
  raw = np.random.default_rng(1).integers(0, 256, (2, 2, 3, 3, 3), dtype=np.uint8)
  kwargs = dict(title='t', col_labels=['x', 'y'], row_labels=['1', '2'])
  np.testing.assert_array_equal(ml.labelled_grid(raw, **kwargs),
                                ml.labelled_grid(raw / 255.0, **kwargs))
  np.testing.assert_array_equal(ml.labelled_grid(raw, title='', scale=1, pad=1),
                                ml.image_grid(raw, pad=1))


def test_labelled_grid_rejects_mismatched_labels_and_bad_input():
  tiles = np.zeros((2, 3, 4, 4, 3))
  with pytest.raises(ValueError, match='2 col_labels for 3 cols'):
    ml.labelled_grid(tiles, title='t', col_labels=['a', 'b'])
  with pytest.raises(ValueError, match='3 row_labels for 2 rows'):
    ml.labelled_grid(tiles, title='t', row_labels=['a', 'b', 'c'])
  with pytest.raises(ValueError):
    ml.labelled_grid(np.zeros((3, 4, 4, 3)), title='t')  # Not (rows, cols, h, w, c).
  with pytest.raises(ValueError):
    ml.labelled_grid(np.zeros((1, 1, 4, 4, 2)), title='t')
  with pytest.raises(ValueError):
    ml.labelled_grid(tiles, title='t', scale=0)


def test_labelled_grid_falls_back_to_the_bitmap_font(monkeypatch):
  """PIL < 10.1 (load_default takes no size) or no FreeType: the fixed font still draws."""
  load_default = ml.ImageFont.load_default

  def no_sizes(size=None):
    if size is not None:
      raise TypeError('load_default() got an unexpected keyword argument size')
    return load_default()

  monkeypatch.setattr(ml.ImageFont, 'load_default', no_sizes)
  ml._font.cache_clear()  # pylint: disable=protected-access
  try:
    tiles = np.zeros((1, 2, 28, 28, 3))
    figure = ml.labelled_grid(tiles, title='Title', col_labels=['m0', 'm1'], row_labels=['s'])
    grid_h, grid_w = _grid_shape(1, 2, 28, 28, 2, 2)
    assert figure.shape[0] > grid_h and figure.shape[1] > grid_w
    assert _dark(figure[:figure.shape[0] - grid_h])
  finally:
    ml._font.cache_clear()  # pylint: disable=protected-access


# ----------------------------------------------------------------------------------------------
# MetricWriter and reading back.


def test_metric_writer_round_trips_scalars_and_images(tmp_path):
  logdir = str(tmp_path / 'tb')
  image = ml.image_grid(_constant_tiles(2, 2, 3, 3, 3), pad=1)
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
