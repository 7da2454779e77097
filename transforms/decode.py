"""The decode step: a row with an image cell becomes ``(row, crop)``, or an error record.

Thin by design: the parsing and every check live in :func:`transforms.crop_codec.decode_crop`.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms.crop_codec import (
    DEFAULT_MAX_PIXELS,
    CropDecodeError,
    cell_chars_bound,
    decode_crop,
)
from transforms.errors import ERRORS_TAG, error_record
from transforms import metrics

class DecodeCrops(beam.DoFn):
    """Decodes the image cell of each row; never raises for bad data.

    Main output: ``(row, crop)`` with the row unchanged (it is the key that rejoins the features,
    and an error later on still has the original cell) and ``crop`` a uint8 (H, W, C) array.
    Tagged output ``errors``: one error record per row that cannot be decoded.
    """

    def __init__(
        self,
        image_column: str,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        self._image_column = image_column
        self._max_pixels = max_pixels
        self._max_cell_chars = cell_chars_bound(max_pixels)

    def setup(self) -> None:
        self._decoded = Metrics.counter(metrics.NAMESPACE, metrics.ROWS_DECODED)
        self._pixels = Metrics.distribution(metrics.NAMESPACE, metrics.CROP_PIXELS)

    def _error(self, reason: str, detail: str, row: Mapping[str, Any]) -> beam.pvalue.TaggedOutput:
        Metrics.counter(metrics.NAMESPACE, metrics.error_counter(reason)).inc()
        return beam.pvalue.TaggedOutput(ERRORS_TAG, error_record(reason, detail, row=row))

    def process(self, row: Mapping[str, Any]) -> Iterator[Any]:
        try:
            crop = decode_crop(
                row.get(self._image_column),
                max_pixels=self._max_pixels,
                max_cell_chars=self._max_cell_chars,
            )
        except CropDecodeError as error:
            yield self._error(str(error.reason), error.detail, row)
            return
        self._decoded.inc()
        self._pixels.update(int(crop.shape[0] * crop.shape[1]))
        yield row, np.asarray(crop)
