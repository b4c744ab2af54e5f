"""The run folder, written and read in one place.

  config.json     the settings the run was started with (flat keys; a resume must match them)
  metadata.json   written last: its presence means the run finished
  log.jsonl       one line per optimizer step
  tensorboard/    with --log-with tensorboard: the same scalars as TensorBoard event files
  checkpoints/    see core/checkpoint.py
  samples/        sample grids (image tasks)
"""

from __future__ import annotations

import json
from pathlib import Path

from imprint.core import checkpoint as ckpt
from imprint.util.errors import ImprintError
from imprint.util.files import make_folder, write_json_atomic, write_text_atomic


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metadata_path(self) -> Path:
        return self.path / "metadata.json"

    @property
    def log_path(self) -> Path:
        return self.path / "log.jsonl"

    @property
    def tensorboard_path(self) -> Path:
        return self.path / "tensorboard"

    def is_finished(self) -> bool:
        return self.metadata_path.is_file()

    def is_started(self) -> bool:
        return self.config_path.exists() or bool(ckpt.list_checkpoints(self.path))

    def check_new_output(self, flag: str = "--output") -> None:
        """Never overwrite a run: a folder with a run in it needs --resume."""
        if self.path.exists() and not self.path.is_dir():
            raise ImprintError(f"{flag} {self.path}: is a file, not a folder; choose a folder for the run")
        if self.is_finished():
            raise ImprintError(f"{flag} {self.path}: already holds a finished run; choose another folder")
        if self.is_started():
            raise ImprintError(f"{flag} {self.path}: holds an unfinished run; pass --resume to continue it "
                               "or choose another folder")

    def create(self) -> None:
        make_folder(self.path, "--output")

    # --- config and metadata ---------------------------------------------------------------
    def read_config(self) -> dict | None:
        if not self.config_path.exists():
            return None
        try:
            with open(self.config_path) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise ImprintError(f"{self.config_path}: unreadable ({e}); the run folder is damaged: "
                               "use a new --output") from e

    def write_config(self, config: dict) -> None:
        if not self.config_path.exists():
            write_json_atomic(self.config_path, config)

    def write_metadata(self, metadata: dict) -> None:
        write_json_atomic(self.metadata_path, metadata)

    def read_metadata(self, flag: str = "--run") -> dict:
        if not self.metadata_path.is_file():
            hint = (" (training did not finish: resume it with `imprint train ... --resume`)"
                    if self.config_path.is_file() else "")
            raise ImprintError(f"{flag} {self.path}: no metadata.json, so not a finished imprint run{hint}")
        try:
            with open(self.metadata_path) as f:
                metadata = json.load(f)
            if not isinstance(metadata, dict):
                raise ValueError("not a JSON object")
            return metadata
        except (OSError, ValueError) as e:
            raise ImprintError(f"{self.metadata_path}: unreadable ({e}); the run folder is damaged") from e

    # --- the log --------------------------------------------------------------------------
    def open_log(self, start_step: int, log_with: str = "none") -> StepLog:
        """The log for appending from `start_step` on: lines of steps past it (written by a run
        killed after its last checkpoint) are cut, so every step is logged once; TensorBoard's
        events of those steps are purged the same way."""
        self.create()
        if self.log_path.exists():
            lines = self.log_path.read_text().splitlines()
            kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= start_step]
            if len(kept) != len(lines):
                write_text_atomic(self.log_path, "".join(line + "\n" for line in kept))
        writer = None
        if log_with == "tensorboard":
            # events of steps > start_step hidden, as log.jsonl cuts them: the next step logged is
            # start_step + 1, which purge_step names
            writer = tensorboard_writer()(log_dir=str(self.tensorboard_path), purge_step=start_step + 1)
        return StepLog(open(self.log_path, "a"), writer)


class StepLog:
    """log.jsonl, and (with --log-with tensorboard) each of its scalars as a TensorBoard scalar of
    the same name at the same step, both flushed every step."""

    def __init__(self, file, writer=None):
        self.file, self.writer = file, writer

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, record["step"], walltime=record.get("time"))
            self.writer.flush()

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def tensorboard_writer():
    """torch's SummaryWriter class; a one-line error where the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImprintError("--log-with tensorboard: the tensorboard package is not installed; pip install "
                           "tensorboard (or imprint-ml[tensorboard]), or use --log-with none") from e
    return SummaryWriter


def _step_of(line: str) -> int | None:
    """The step of a log line; None for a line cut short by a kill."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None
