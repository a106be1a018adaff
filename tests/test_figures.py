"""Image grids and labelled figures (figures.py)."""

import numpy as np
import pytest
from PIL import Image

from moe_ebm_jax import figures


# ----------------------------------------------------------------------------------------------
# image_grid / save_png.


def _constant_tiles(rows, cols, h, w, c):
  """Tile (r, k) is constant (10 * r + k + 1) / 255, so every tile has its own uint8 value."""
  values = (10 * np.arange(rows)[:, None] + np.arange(cols)[None, :] + 1) / 255.0
  return np.broadcast_to(values[:, :, None, None, None], (rows, cols, h, w, c)).copy()


@pytest.mark.parametrize('pad', [0, 1, 3])
def test_image_grid_places_tiles_and_padding(pad):
  rows, cols, h, w, c = 2, 3, 4, 5, 3
  grid = figures.image_grid(_constant_tiles(rows, cols, h, w, c), pad=pad, pad_value=0.0)
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
  grid = figures.image_grid(np.zeros((1, 2, 2, 2, 1)), pad=1, pad_value=1.0)
  expected = np.array([[255, 255, 255, 255, 255, 255, 255],
                       [255, 0, 0, 255, 0, 0, 255],
                       [255, 0, 0, 255, 0, 0, 255],
                       [255, 255, 255, 255, 255, 255, 255]], np.uint8)
  np.testing.assert_array_equal(grid[..., 0], expected)
  half = figures.image_grid(np.zeros((1, 1, 1, 1, 3)), pad=1, pad_value=0.5)
  assert half[0, 0].tolist() == [128, 128, 128] and half[1, 1].tolist() == [0, 0, 0]


def test_image_grid_rounds_and_clips():
  eps = 1e-3
  values = np.array([(0.5 - eps) / 255, (0.5 + eps) / 255, (254.5 - eps) / 255,
                     (254.5 + eps) / 255, 254.9 / 255, 100.4 / 255, 100.6 / 255,
                     -0.3, 1.7, np.nan, np.inf, -np.inf])
  grid = figures.image_grid(values.reshape(1, -1, 1, 1, 1), pad=0)
  assert grid[0, :, 0].tolist() == [0, 1, 254, 255, 255, 100, 101, 0, 255, 0, 255, 0]
  # uint8 input passes through unchanged.
  raw = np.arange(6, dtype=np.uint8).reshape(1, 6, 1, 1, 1)
  assert figures.image_grid(raw, pad=0)[0, :, 0].tolist() == list(range(6))


def test_image_grid_flat_input_fills_blank_tiles():
  n, cols, h, w = 7, 3, 2, 2
  tiles = (np.arange(1, n + 1) / 255.0)[:, None, None, None] * np.ones((n, h, w, 1))
  grid = figures.image_grid(tiles, pad=1, pad_value=1.0, cols=cols)
  rows = 3  # ceil(7 / 3).
  assert grid.shape == (rows * (h + 1) + 1, cols * (w + 1) + 1, 1)
  for i in range(rows * cols):
    r, k = divmod(i, cols)
    tile = grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + k * (w + 1):1 + k * (w + 1) + w]
    np.testing.assert_array_equal(tile, i + 1 if i < n else 255)  # Blank = pad value.
  # Same layout as the equivalent 5-D input.
  padded = np.concatenate([tiles, np.ones((2, h, w, 1))]).reshape(rows, cols, h, w, 1)
  np.testing.assert_array_equal(grid, figures.image_grid(padded, pad=1, pad_value=1.0))
  # Exactly divisible: no extra row.
  assert figures.image_grid(tiles[:6], pad=0, cols=3).shape == (2 * h, 3 * w, 1)


def test_image_grid_rejects_bad_shapes():
  with pytest.raises(ValueError):
    figures.image_grid(np.zeros((4, 2, 2, 1)))  # (N, H, W, C) needs cols.
  with pytest.raises(ValueError):
    figures.image_grid(np.zeros((2, 2, 2)), cols=1)
  with pytest.raises(ValueError):
    figures.image_grid(np.zeros((2, 3, 2, 2, 1)), cols=2)


@pytest.mark.parametrize('channels', [1, 3])
def test_save_png_round_trips(tmp_path, channels):
  grid = figures.image_grid(np.random.default_rng(0).random((2, 3, 4, 4, channels)), pad=1)
  path = str(tmp_path / 'sub' / 'grid.png')
  figures.save_png(path, grid)
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
  figure = figures.labelled_grid(tiles, title='A title', col_labels=['a', 'b', 'c'],
                            row_labels=['row 1', 'row 2'], scale=scale, pad=pad)
  assert figure.dtype == np.uint8 and figure.ndim == 3 and figure.shape[-1] == 3
  grid_h, grid_w = _grid_shape(rows, cols, h, w, scale, pad)
  top, left = figure.shape[0] - grid_h, figure.shape[1] - grid_w
  assert top > 20 and left > 10  # A title band, a label band and a row-label margin.
  expected = figures.to_uint8(tiles)
  for r in range(rows):
    for k in range(cols):
      y, x = top + pad + r * (scale * h + pad), left + pad + k * (scale * w + pad)
      # Nearest-neighbour: every input pixel becomes a scale x scale block, in every channel.
      upscaled = np.kron(expected[r, k], np.ones((scale, scale, 1), np.uint8))
      np.testing.assert_array_equal(figure[y:y + scale * h, x:x + scale * w],
                                    np.broadcast_to(upscaled, (scale * h, scale * w, 3)))
  # The grid region is exactly the bare grid: text never lands on tiles or padding.
  bare = figures.labelled_grid(tiles, title='', scale=scale, pad=pad)
  assert bare.shape == (grid_h, grid_w, 3)
  np.testing.assert_array_equal(figure[top:, left:], bare)


def test_labelled_grid_draws_title_and_every_label_in_its_band():
  rows, cols, h, w = 3, 4, 28, 28
  tiles = np.zeros((rows, cols, h, w, 3))
  grid_h, grid_w = _grid_shape(rows, cols, h, w, 2, 2)
  plain = figures.labelled_grid(tiles, title='')
  assert plain.shape == (grid_h, grid_w, 3)  # No title: no band at all.
  titled = figures.labelled_grid(tiles, title='Joint samples')
  band = titled.shape[0] - grid_h
  assert band > 0 and titled.shape[1] == grid_w
  assert _dark(titled[:band]) and not _dark(titled[:, :2])  # Drawn, with a white margin.
  assert not np.array_equal(titled[:band], figures.labelled_grid(tiles, title='Other words')[:band])
  # A title wider than the figure wraps onto more lines: taller, never wider.
  long = figures.labelled_grid(tiles, title=' '.join(['word'] * 40))
  assert long.shape[0] > titled.shape[0] and long.shape[1] == grid_w
  full = figures.labelled_grid(tiles, title='T', col_labels=[f'm{k}' for k in range(cols)],
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
  font = figures._font(12)  # pylint: disable=protected-access
  wrap = lambda text, width: figures._wrap(text, font, width)  # pylint: disable=protected-access
  assert wrap('z ~ q(z | x_m0), w ~ p(w)', 1) == ['z ~ q(z | x_m0),', 'w ~ p(w)']
  assert wrap('one two three', 10_000) == ['one two three'] and wrap('', 100) == []
  lines = wrap(' '.join(['word'] * 30), 100)
  assert len(lines) > 1 and all(figures._text_width(font, l) <= 100 for l in lines)  # pylint: disable=protected-access


def test_labelled_grid_uint8_and_float_agree_and_scale_one_is_the_grid():
  raw = np.random.default_rng(1).integers(0, 256, (2, 2, 3, 3, 3), dtype=np.uint8)
  kwargs = dict(title='t', col_labels=['x', 'y'], row_labels=['1', '2'])
  np.testing.assert_array_equal(figures.labelled_grid(raw, **kwargs),
                                figures.labelled_grid(raw / 255.0, **kwargs))
  np.testing.assert_array_equal(figures.labelled_grid(raw, title='', scale=1, pad=1),
                                figures.image_grid(raw, pad=1))


def test_labelled_grid_rejects_mismatched_labels_and_bad_input():
  tiles = np.zeros((2, 3, 4, 4, 3))
  with pytest.raises(ValueError, match='2 col_labels for 3 cols'):
    figures.labelled_grid(tiles, title='t', col_labels=['a', 'b'])
  with pytest.raises(ValueError, match='3 row_labels for 2 rows'):
    figures.labelled_grid(tiles, title='t', row_labels=['a', 'b', 'c'])
  with pytest.raises(ValueError):
    figures.labelled_grid(np.zeros((3, 4, 4, 3)), title='t')  # Not (rows, cols, h, w, c).
  with pytest.raises(ValueError):
    figures.labelled_grid(np.zeros((1, 1, 4, 4, 2)), title='t')
  with pytest.raises(ValueError):
    figures.labelled_grid(tiles, title='t', scale=0)


def test_labelled_grid_falls_back_to_the_bitmap_font(monkeypatch):
  """PIL < 10.1 (load_default takes no size) or no FreeType: the fixed font still draws."""
  load_default = figures.ImageFont.load_default

  def no_sizes(size=None):
    if size is not None:
      raise TypeError('load_default() got an unexpected keyword argument size')
    return load_default()

  monkeypatch.setattr(figures.ImageFont, 'load_default', no_sizes)
  figures._font.cache_clear()  # pylint: disable=protected-access
  try:
    tiles = np.zeros((1, 2, 28, 28, 3))
    figure = figures.labelled_grid(tiles, title='Title', col_labels=['m0', 'm1'], row_labels=['s'])
    grid_h, grid_w = _grid_shape(1, 2, 28, 28, 2, 2)
    assert figure.shape[0] > grid_h and figure.shape[1] > grid_w
    assert _dark(figure[:figure.shape[0] - grid_h])
  finally:
    figures._font.cache_clear()  # pylint: disable=protected-access
