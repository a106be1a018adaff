"""Every modality drawn in its own form, for the report's figures.

`tiles(specs, values)` turns per-modality values {name: (N, ...)} into one grid of square RGB
tiles (N, M, S, S, 3) in [0, 1] that metric_logging.labelled_grid lays out under a title and
labels: images as images (grey as grey), a categorical modality as its class written in the tile
(with its probability when the value is a probability vector), a vector as a bar chart of its
entries on a fixed scale. `scatter_panels` draws 2-D vector modalities as titled scatter plots.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw

from moe_ebm_jax import metric_logging
from moe_ebm_jax import modalities as modalities_lib

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
    pil = Image.fromarray(metric_logging.to_uint8(img)).resize(
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
  font = metric_logging._font(max(8, size // 2 if len(lines) == 1 else size // 3))  # pylint: disable=protected-access
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
  return metric_logging.labelled_grid(
      grid, title=title, col_labels=[s for s, _, _ in panels], scale=1,
      row_labels=[f'x: [{lo[0]:.1f}, {lo[0] + span[0]:.1f}], y: [{lo[1]:.1f}, '
                  f'{lo[1] + span[1]:.1f}]'])
