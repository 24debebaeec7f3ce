"""Loggers whose files keep a run's whole history across resumes and re-runs."""

from __future__ import annotations

import csv

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued instead of deleted:
    its header is read back so new rows append under it (new columns rewrite the file with every old
    row kept, as Lightning does within one run)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = sorted(header)
            if header != self.metrics_keys:  # keep Lightning's sorted column order for appended rows
                _ExperimentWriter._rewrite_with_new_header(self, self.metrics_keys)


class AppendingCSVLogger(CSVLogger):
    """:class:`lightning.pytorch.loggers.CSVLogger` that keeps ``metrics.csv`` when a run resumes or is run
    again in the same folder (Lightning's deletes the file and starts it over). Rows of a resumed run
    follow the rows already there; ``step`` tells where each came from."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


__all__ = ["AppendingCSVLogger"]
