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
    encode_crop,
)
from transforms.errors import ERRORS_TAG, error_record
from transforms import metrics

class DecodeCrops(beam.DoFn):
    """Decodes the image cell of each row; never raises for bad data.

    Main output: ``(row, crop)``, ``crop`` a uint8 (H, W, C) array and ``row`` the row with its
    image cell set to None: the cell (tens of KB of hex) has served its purpose once decoded, and
    the crop alone rides on to the model. The key keeps its place among the columns, so a row the
    model fails on gets its cell back from the crop (:func:`restore_image_cell`) in the original
    column order. Tagged output ``errors``: one error record per row that cannot be decoded,
    its cell unchanged.
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
        yield {**row, self._image_column: None}, np.asarray(crop)


def restore_image_cell(row: Mapping[str, Any], image_column: str, crop: np.ndarray) -> dict[str, Any]:
    """A decoded row with its image cell back, written from the crop in the producer's format.

    The same pixels exactly; the same text where the producer wrote the cell (``str`` of the dict,
    ``zlib.compress`` at its default level, as every cell of the seed table is), so redoing the row
    gives the same features.
    """
    return {**row, image_column: encode_crop(crop)}
