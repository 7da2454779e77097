"""The job's command-line options, as a Beam ``PipelineOptions`` subclass.

Being ``PipelineOptions``, they sit beside every runner flag (``--runner``, ``--project``,
``--direct_num_workers``, ...) on one command line, and travel to workers with the job.
"""
from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from model.contract import ARCHITECTURE_NAMES
from transforms.crop_codec import DEFAULT_MAX_PIXELS
from weights import BUNDLED_WEIGHTS


class OsNetOptions(PipelineOptions):
    """Options of the OSNet feature job (``python -m pipeline --help`` lists them)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("osnet-beam")
        group.add_argument(
            "--input", default=None,
            help="Glob of CSV or Parquet shards, local or on any Beam filesystem (gs://, s3://).",
        )
        group.add_argument(
            "--input_format", default="auto", choices=("auto", "csv", "parquet"),
            help="Input format; auto decides by file extension (.csv, .parquet).",
        )
        # CSV dialect (transforms.csv_records.CsvDialect)
        group.add_argument(
            "--csv_delimiter", default=None,
            help="CSV field delimiter: one character, or tab, comma, semicolon, pipe; default: "
            "tab for .tsv files, comma otherwise.",
        )
        group.add_argument(
            "--encoding", default="utf-8",
            help="Text encoding of CSV input (any ASCII-compatible Python codec: utf-8, latin-1, "
            "cp1252, ...); a record that does not decode becomes a bad_encoding error row.",
        )
        group.add_argument(
            "--image_column", default="feature_vector",
            help="Column holding the crop dict literal (the original tool's legacy name).",
        )
        group.add_argument(
            "--output", default=None,
            help="Output directory (must be empty or absent, see --overwrite): this run's "
            "features-RUN-SSSSS-of-NNNNN.* and errors-RUN-SSSSS-of-NNNNN.jsonl shards and "
            "_SUCCESS.json, the manifest naming them (read them with pipeline.read_features).",
        )
        group.add_argument(
            "--output_format", default="parquet", choices=("parquet", "csv"),
            help="parquet: list<float32> column; csv: hex of zlib of packed float32 (original).",
        )
        group.add_argument(
            "--output_column", default=None,
            help="Name of the features column; default: the image column, replaced in place.",
        )
        group.add_argument(
            "--weights", default=BUNDLED_WEIGHTS,
            help="OSNet checkpoint (torchreid layout), any Beam filesystem path; default: the "
            "bundled osnet_x0_25 MSMT17 demo weights.",
        )
        group.add_argument(
            "--arch", default=None, choices=ARCHITECTURE_NAMES,
            help="OSNet architecture; default: inferred from the checkpoint (an explicit one "
            "that contradicts the checkpoint is an error).",
        )
        group.add_argument(
            "--batch_size", type=int, default=None,
            help="Crops per model call; default: the fastest measured for the backend/device.",
        )
        group.add_argument(
            "--device", default="auto", choices=("auto", "cpu", "cuda"),
            help="auto: CUDA when the worker has it, else CPU.",
        )
        group.add_argument(
            "--backend", default="auto", choices=("auto", "torch", "onnxruntime"),
            help="Inference runtime; auto picks the fastest for the device.",
        )
        group.add_argument(
            "--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
            help="Compute precision: fp32; fp16 on CUDA; bf16 on CUDA or, opt-in, on CPU cores with "
            "AVX512-BF16/AMX (OpenVINO; check it with python -m pipeline.compare).",
        )
        group.add_argument(
            "--threads", type=int, default=None,
            help="CPU threads per model (default: every core the process may use); set it to "
            "cores / processes when running several SDK processes per machine.",
        )
        group.add_argument(
            "--channel_order", default="rgb", choices=("rgb", "bgr"),
            help="Channel order of the stored pixels (bgr for crops cut with OpenCV).",
        )
        group.add_argument(
            "--max_pixels", type=int, default=DEFAULT_MAX_PIXELS,
            help="Largest crop (width x height) accepted; larger ones become too_many_pixels errors.",
        )
        group.add_argument(
            "--num_shards", type=int, default=0,
            help="Output shards per kind; 0 lets the runner decide.",
        )
        group.add_argument(
            "--log_level", default="warning", choices=("debug", "info", "warning", "error"),
            help="Level of Beam's and other libraries' log lines (ours are always shown); "
            "info brings Beam's INFO lines back.",
        )
        group.add_argument(
            "--progress", default="auto", choices=("auto", "bar", "lines", "off"),
            help="auto: a live bar when stderr is a terminal, else a status line every "
            "--progress_interval seconds; on remote runners status lines from the job's metrics.",
        )
        group.add_argument(
            "--progress_interval", type=float, default=30.0,
            help="Seconds between status lines when there is no bar.",
        )
        group.add_argument(
            "--overwrite", action="store_true",
            help="Replace the previous run's files in --output; they stay readable until this "
            "run's manifest is in place, and stay untouched if this run fails.",
        )
        group.add_argument(
            "--max_error_fraction", type=float, default=1.0,
            help="Exit with status 3 when more than this fraction of the rows are errors; at the "
            "default 1.0, only when no row became features (every row failed).",
        )
        group.add_argument(
            "--no_wait", action="store_true",
            help="Submit the job and return at once, printing its id (Dataflow, Flink); the job "
            "itself writes the manifest when it finishes.",
        )
        group.add_argument(
            "--share_model_across_processes", action="store_true",
            help="One model per machine shared by all SDK processes (saves GPU memory).",
        )
