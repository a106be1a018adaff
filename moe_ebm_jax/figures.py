"""Figures: image grids, labelled grids, and every modality drawn in its own form.

- `image_grid` tiles images in [0, 1] into one padded uint8 image; `save_png` writes it.
- `labelled_grid` is an upscaled image_grid with a title and column / row labels, for figures
  that read without a caption.
- `tiles(specs, values)` turns per-modality values {name: (N, ...)} into one grid of square RGB
tiles (N, M, S, S, 3) in [0, 1] that labelled_grid lays out under a title and
labels: images as images (grey as grey), a categorical modality as its class written in the tile
(with its probability when the value is a probability vector), a vector as a bar chart of its
entries on a fixed scale. `scatter_panels` draws 2-D vector modalities as titled scatter plots.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any
from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from moe_ebm_jax.vae import modalities as modalities_lib


def to_uint8(images: Any) -> np.ndarray:
  """Floats in [0, 1] -> uint8, clipped and rounded half up; uint8 input is returned unchanged.

  NaN maps to 0 and +-inf to 255 / 0, so a diverged sample still shows up as an image.
  """
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  x = np.nan_to_num(images.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
  # floor(x + 0.5), not astype alone: astype truncates, so 254.9 would become 254.
  return np.floor(np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def image_grid(images: Any, pad: int = 1, pad_value: float = 1.0, *,
               cols: int | None = None) -> np.ndarray:
  """Tiles images into one uint8 image with `pad` lines of `pad_value` around every tile.

  Args:
    images: floats in [0, 1] (or uint8) of shape (rows, cols, H, W, C), or (N, H, W, C) with
      `cols` given; then rows = ceil(N / cols) and the missing last tiles are blank (pad_value).
    pad: padding width in pixels, between tiles and around the border.
    pad_value: padding colour in [0, 1], the same in every channel.
    cols: the number of columns for (N, H, W, C) input.

  Returns:
    uint8 (rows * (H + pad) + pad, cols * (W + pad) + pad, C).
  """
  images = to_uint8(images)
  if pad < 0:
    raise ValueError(f'pad must be >= 0, got {pad}.')
  fill = to_uint8(np.float64(pad_value))
  if images.ndim == 4:
    if cols is None or cols < 1:
      raise ValueError(f'(N, H, W, C) images need cols >= 1, got cols={cols}.')
    n = images.shape[0]
    rows = max(math.ceil(n / cols), 1)
    blank = np.full((rows * cols - n,) + images.shape[1:], fill, np.uint8)
    images = np.concatenate([images, blank]).reshape((rows, cols) + images.shape[1:])
  elif images.ndim == 5:
    if cols is not None and cols != images.shape[1]:
      raise ValueError(f'cols={cols} contradicts images of shape {images.shape}.')
  else:
    raise ValueError('images must be (rows, cols, H, W, C) or (N, H, W, C), got shape '
                     f'{images.shape}.')
  rows, cols, h, w, c = images.shape
  # Pad every tile on its top and left, lay the tiles out, then close the bottom and right.
  tiles = np.pad(images, ((0, 0), (0, 0), (pad, 0), (pad, 0), (0, 0)), constant_values=fill)
  grid = tiles.transpose(0, 2, 1, 3, 4).reshape(rows * (h + pad), cols * (w + pad), c)
  return np.pad(grid, ((0, pad), (0, pad), (0, 0)), constant_values=fill)


def save_png(path: str, grid: Any) -> None:
  """Writes a uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image (floats: see to_uint8)."""
  grid = to_uint8(grid)
  if grid.ndim == 3 and grid.shape[-1] == 1:
    grid = grid[..., 0]
  if grid.ndim not in (2, 3) or (grid.ndim == 3 and grid.shape[-1] not in (3, 4)):
    raise ValueError(f'expected an (H, W[, 1|3|4]) image, got shape {grid.shape}.')
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  Image.fromarray(np.ascontiguousarray(grid)).save(path, format='PNG')


_TITLE_FONT_SIZE = 12
_LABEL_FONT_SIZE = 11
_MIN_FONT_SIZE = 7
_MARGIN = 3  # Pixels between text and the image's edge or the grid.


@functools.lru_cache(maxsize=None)
def _font(size: int) -> Any:
  """PIL's default font at `size` pixels; its fixed bitmap font (about 11 px) where the sized one
  needs FreeType (missing) or PIL >= 10.1 (older load_default takes no size)."""
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, ImportError, OSError):
    return ImageFont.load_default()


def _text_width(font: Any, text: str) -> int:
  left, _, right, _ = font.getbbox(text)
  return right - left


def _fit_font(labels: list[str], width: int) -> Any:
  """The largest label font, down to _MIN_FONT_SIZE, in which every label is at most `width`
  wide (the smallest if none fits: the text then spills into its neighbours' bands)."""
  for size in range(_LABEL_FONT_SIZE, _MIN_FONT_SIZE - 1, -1):
    font = _font(size)
    if all(_text_width(font, label) <= width for label in labels):
      return font
  return _font(_MIN_FONT_SIZE)


def _wrap(text: str, font: Any, width: int) -> list[str]:
  """Greedy word wrap of `text` to lines at most `width` wide (a longer single word stays whole).

  A lone symbol ('~', '|', '=') stays on one line with the words either side: 'w ~ p(w)' is
  never split.
  """
  words: list[str] = []
  glue = False
  for word in text.split():
    symbol = not any(ch.isalnum() for ch in word)
    if words and (symbol or glue):
      words[-1] += ' ' + word
    else:
      words.append(word)
    glue = symbol
  lines: list[str] = []
  for word in words:
    if lines and _text_width(font, lines[-1] + ' ' + word) <= width:
      lines[-1] += ' ' + word
    else:
      lines.append(word)
  return lines


def _line_height(font: Any) -> int:
  return font.getbbox('Ag')[3] + 2  # Ascender to descender, plus a little leading.


def labelled_grid(tiles: Any, *, title: str, col_labels: list[str] | None = None,
                  row_labels: list[str] | None = None, scale: int = 2,
                  pad: int = 2) -> np.ndarray:
  """An RGB figure: the tiles upscaled, under a title and column labels, with row labels.

  Layout, top to bottom: a title band (the title word-wrapped to the figure's width; none when
  `title` is empty), a column-label band (when `col_labels` are given), then the tile grid;
  row labels (when given) fill a left margin. The grid is image_grid(upscaled tiles, pad,
  white) and sits at the figure's bottom right, so tile (r, k) covers rows
  H - G_h + pad + r * (scale * h + pad) + [0, scale * h) and columns W - G_w + pad +
  k * (scale * w + pad) + [0, scale * w), G being the grid's shape. Text is black on white and
  never covers a tile; column labels shrink (to 7 px) to fit their column.

  Args:
    tiles: floats in [0, 1] (see to_uint8) or uint8, (rows, cols, h, w, c) with c in {1, 3};
      greyscale becomes RGB.
    title: the figure's title ('' for none).
    col_labels: `cols` strings, one above each column, or None.
    row_labels: `rows` strings, one left of each row, or None.
    scale: integer nearest-neighbour upscaling of every tile (2: a 28-px digit shows at 56 px).
    pad: white pixels between tiles and around the grid.

  Returns:
    uint8 (H, W, 3) with H = title band + label band + rows * (scale * h + pad) + pad and
    W = row-label margin + cols * (scale * w + pad) + pad.
  """
  tiles = to_uint8(tiles)
  if tiles.ndim != 5 or tiles.shape[-1] not in (1, 3):
    raise ValueError('tiles must be (rows, cols, h, w, c) with c in {1, 3}, got shape '
                     f'{tiles.shape}.')
  if int(scale) != scale or scale < 1:
    raise ValueError(f'scale must be an integer >= 1, got {scale}.')
  rows, cols = tiles.shape[:2]
  for name, labels, count in (('col_labels', col_labels, cols), ('row_labels', row_labels, rows)):
    if labels is not None and len(labels) != count:
      raise ValueError(f'{len(labels)} {name} for {count} {name[:3]}s of tiles of shape '
                       f'{tiles.shape}.')
  if tiles.shape[-1] == 1:
    tiles = np.repeat(tiles, 3, axis=-1)
  scale = int(scale)
  tiles = np.repeat(np.repeat(tiles, scale, axis=2), scale, axis=3)
  grid = image_grid(tiles, pad=pad, pad_value=1.0)
  tile_h, tile_w = tiles.shape[2:4]

  row_font = _font(_LABEL_FONT_SIZE)
  left = 0
  if row_labels is not None:
    left = max(_text_width(row_font, label) for label in row_labels) + 2 * _MARGIN
  width = left + grid.shape[1]
  title_font = _font(_TITLE_FONT_SIZE)
  title_lines = _wrap(title, title_font, width - 2 * _MARGIN)
  title_h = len(title_lines) * _line_height(title_font) + 2 * _MARGIN if title_lines else 0
  col_font = _fit_font(list(col_labels), tile_w + pad) if col_labels is not None else None
  label_h = _line_height(col_font) + _MARGIN if col_font is not None else 0
  top = title_h + label_h

  image = Image.new('RGB', (width, top + grid.shape[0]), (255, 255, 255))
  draw = ImageDraw.Draw(image)
  black = (0, 0, 0)
  for i, line in enumerate(title_lines):
    draw.text((_MARGIN, _MARGIN + i * _line_height(title_font)), line, fill=black,
              font=title_font)
  for k, label in enumerate(col_labels or []):
    centre = left + pad + k * (tile_w + pad) + tile_w / 2
    x0, _, x1, _ = col_font.getbbox(label)
    draw.text((round(centre - (x0 + x1) / 2), title_h), label, fill=black, font=col_font)
  for r, label in enumerate(row_labels or []):
    middle = top + pad + r * (tile_h + pad) + tile_h / 2
    _, y0, _, y1 = row_font.getbbox(label)
    draw.text((_MARGIN, round(middle - (y0 + y1) / 2)), label, fill=black, font=row_font)
  figure = np.array(image)
  # Pasted last, so a spilling label can never touch a tile.
  figure[top:, left:] = grid
  return figure



# ----------------------------------------------------------------------------------------------
# Every modality in its own form.


DEFAULT_TILE = 28
VECTOR_RANGE = 3.0  # Bars span [-3, 3]: a standardised vector's usual values.
# Distinct colours for classes (scatter plots), cycled beyond ten.
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def tile_size(specs: Sequence[modalities_lib.ModalitySpec]) -> int:
  sizes = [max(s.shape[:2]) for s in specs if s.kind == 'image']
  return max(sizes) if sizes else DEFAULT_TILE


def _image_tile(value: np.ndarray, size: int) -> np.ndarray:
  img = np.clip(np.asarray(value, np.float32), 0, 1)
  if img.shape[-1] == 1:
    img = np.repeat(img, 3, axis=-1)
  h, w = img.shape[:2]
  if (h, w) != (size, size):  # Nearest neighbour onto the tile, centred.
    scale = size / max(h, w)
    pil = Image.fromarray(to_uint8(img)).resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.NEAREST)
    canvas = np.ones((size, size, 3), np.float32)
    small = np.asarray(pil, np.float32) / 255
    top, left = (size - small.shape[0]) // 2, (size - small.shape[1]) // 2
    canvas[top:top + small.shape[0], left:left + small.shape[1]] = small
    img = canvas
  return img


def _text_tile(lines: Sequence[str], size: int) -> np.ndarray:
  pil = Image.new('RGB', (size, size), (255, 255, 255))
  draw = ImageDraw.Draw(pil)
  font = _font(max(8, size // 2 if len(lines) == 1 else size // 3))  # pylint: disable=protected-access
  y = 1
  for line in lines:
    draw.text((2, y), line, fill=(0, 0, 0), font=font)
    y += max(8, size // 2)
  return np.asarray(pil, np.float32) / 255


def _class_tile(value: np.ndarray, size: int) -> np.ndarray:
  value = np.asarray(value)
  if value.ndim == 0:  # A label of the data.
    return _text_tile([str(int(value))], size)
  k = int(np.argmax(value))  # Class probabilities of a decode.
  return _text_tile([str(k), f'{value[k]:.2f}'], size)


def _vector_tile(value: np.ndarray, size: int) -> np.ndarray:
  value = np.asarray(value, np.float32).reshape(-1)
  pil = Image.new('RGB', (size, size), (255, 255, 255))
  draw = ImageDraw.Draw(pil)
  mid = size // 2
  draw.line([(0, mid), (size - 1, mid)], fill=(180, 180, 180))
  width = max(1, size // max(1, len(value)))
  for i, v in enumerate(value[:size]):
    height = int(np.clip(v / VECTOR_RANGE, -1, 1) * (mid - 1))
    x0 = i * width
    y0, y1 = sorted((mid, mid - height))
    draw.rectangle([x0, y0, x0 + max(0, width - 2), y1], fill=(31, 119, 180))
  return np.asarray(pil, np.float32) / 255


def tiles(specs: Sequence[modalities_lib.ModalitySpec], values, size: int | None = None
          ) -> np.ndarray:
  """{name: (N, ...)} for the modalities in `specs` -> (N, len(specs), S, S, 3) in [0, 1]; S is
  `size`, or the largest image side among `specs` (pass the whole dataset's tile_size when
  tiles of some modalities are set beside tiles of others)."""
  size = size or tile_size(specs)
  columns = []
  for spec in specs:
    v = np.asarray(values[spec.name])
    draw = {'image': _image_tile, 'categorical': _class_tile, 'vector': _vector_tile}[spec.kind]
    columns.append(np.stack([draw(row, size) for row in v]))
  return np.stack(columns, axis=1)


def scatter_panels(panels, *, title: str, size: int = 240) -> np.ndarray:
  """Side-by-side scatter plots of 2-D points under one title: panels are (subtitle, points
  (N, 2), classes (N,) or None), drawn on shared axes; returns an RGB uint8 image."""
  everything = np.concatenate([p for _, p, _ in panels])
  lo, hi = np.percentile(everything, 1, axis=0), np.percentile(everything, 99, axis=0)
  span = np.maximum(hi - lo, 1e-6) * 1.1
  lo = (lo + hi) / 2 - span / 2
  images = []
  for _, points, classes in panels:
    pil = Image.new('RGB', (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(pil)
    draw.rectangle([0, 0, size - 1, size - 1], outline=(0, 0, 0))
    xy = (np.asarray(points) - lo) / span * (size - 8) + 4
    for i, (px, py) in enumerate(xy):
      colour = (60, 60, 60) if classes is None else PALETTE[int(classes[i]) % len(PALETTE)]
      draw.ellipse([px - 2, size - py - 2, px + 2, size - py + 2], fill=colour)
    images.append((np.asarray(pil, np.float32) / 255)[None])
  grid = np.stack([img[0] for img in images])[None]  # (1, panels, S, S, 3)
  return labelled_grid(
      grid, title=title, col_labels=[s for s, _, _ in panels], scale=1,
      row_labels=[f'x: [{lo[0]:.1f}, {lo[0] + span[0]:.1f}], y: [{lo[1]:.1f}, '
                  f'{lo[1] + span[1]:.1f}]'])
