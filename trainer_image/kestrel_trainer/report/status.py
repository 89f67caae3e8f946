"""status.json: JSON lines written as the original writes them, so tools that tail it keep working.

Each line: the record's own fields (epoch lines: epoch, max_epoch, time_per_epoch, eta), then date, time,
status (STARTED/RUNNING/SUCCESS/FAILURE/SKIPPED), verbosity, message, and the logger's current
`categorical`, `graphical` and `kpi` dictionaries when they are not empty. As in the original these three
are sticky: once set they are repeated on every later line until replaced. Epoch lines carry the
training metrics as strings (`str(value)`, the original's formatting), durations as `str(timedelta)`.
Lines are appended and flushed one by one, so a reader never sees half a record.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from typing import Any, Optional

# The original's names for Keras' log keys (its KEY_MAP).
KEY_MAP = {"val_loss": "validation_loss", "val_acc": "validation_accuracy", "loss": "loss",
           "acc": "training_accuracy", "lr": "learning_rate"}
# Order of the keys in an epoch's logs in the original (Keras 2.2: metrics, validation metrics, then lr).
_EPOCH_KEYS = ("loss", "acc", "val_loss", "val_acc", "lr")


def _clock(seconds: float) -> str:
    return str(_dt.timedelta(seconds=float(seconds)))


class StatusLogger:
    """Appends one JSON object per event to RESULTS/status.json (the original's StatusLogger)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.categorical: dict[str, Any] = {}
        self.graphical: dict[str, Any] = {}
        self.kpi: dict[str, Any] = {}

    def write(self, status: str = "RUNNING", message: Optional[str] = None, verbosity: str = "INFO",
              **fields: Any) -> dict[str, Any]:
        now = _dt.datetime.now()
        record: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
        record.update({
            "date": f"{now.month}/{now.day}/{now.year}",
            "time": f"{now.hour}:{now.minute}:{now.second}",
            "status": status,
            "verbosity": verbosity,
        })
        if message:
            record["message"] = message
        for name in ("categorical", "graphical", "kpi"):
            if getattr(self, name):
                record[name] = getattr(self, name)
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return record

    def epoch(self, epoch: int, max_epoch: int, seconds: float, logs: dict[str, float],
              learning_rate: float) -> dict[str, Any]:
        """The original's per-epoch line: metrics as strings in `graphical`, accuracies in `kpi`."""
        values = {**logs, "lr": learning_rate}
        self.graphical = {KEY_MAP[k]: str(values[k]) for k in _EPOCH_KEYS if values.get(k) is not None}
        self.kpi = {KEY_MAP[k]: str(values[k]) for k in ("acc", "val_acc") if values.get(k) is not None}
        return self.write("RUNNING", "Training loop in progress", epoch=epoch, max_epoch=max_epoch,
                          time_per_epoch=_clock(seconds), eta=_clock(seconds * (max_epoch - epoch)))

    def final_evaluation(self, loss: Optional[float], accuracy: Optional[float]) -> None:
        """The original's closing records: loop complete, final evaluation, its KPIs (floats), success."""
        self.write("RUNNING", "Training loop complete.")
        self.write("RUNNING", "Final model evaluation in progress.")
        self.kpi = {"validation_loss": None if loss is None else float(loss),
                    "validation_accuracy": None if accuracy is None else float(accuracy)}
        self.write("RUNNING", "Model evaluation is complete.")
        self.write("SUCCESS", "Training finished successfully.")
