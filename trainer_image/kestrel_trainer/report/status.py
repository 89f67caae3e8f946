"""status.json: JSON lines in the original's format, so tools that tail it keep working.

Each line: date, time, status (STARTED/RUNNING/SUCCESS/FAILURE), verbosity, message, and for epoch
lines epoch, max_epoch, time_per_epoch, eta, graphical {loss, training_accuracy, validation_loss,
validation_accuracy, learning_rate} and kpi. Lines are appended and flushed one by one, so a reader
never sees half a record.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from typing import Any, Optional


def _clock(seconds: Optional[float]) -> Optional[str]:
    if seconds is None:
        return None
    return str(_dt.timedelta(seconds=round(float(seconds), 3)))


class StatusLogger:
    """Appends one JSON object per event to RESULTS/status.json."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, status: str, message: str, **fields: Any) -> dict[str, Any]:
        now = _dt.datetime.now()
        record: dict[str, Any] = {
            "date": f"{now.month}/{now.day}/{now.year}",
            "time": f"{now.hour}:{now.minute}:{now.second}",
            "status": status,
            "verbosity": "INFO" if status != "FAILURE" else "ERROR",
            "message": message,
        }
        record.update({k: v for k, v in fields.items() if v is not None})
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return record

    def epoch(
        self,
        epoch: int,
        max_epoch: int,
        seconds: float,
        logs: dict[str, float],
        learning_rate: float,
    ) -> dict[str, Any]:
        eta = seconds * (max_epoch - epoch)
        return self.write(
            "RUNNING",
            "Training loop in progress",
            epoch=epoch,
            max_epoch=max_epoch,
            time_per_epoch=_clock(seconds),
            eta=_clock(eta),
            graphical={
                "loss": logs.get("loss"),
                "training_accuracy": logs.get("acc"),
                "validation_loss": logs.get("val_loss"),
                "validation_accuracy": logs.get("val_acc"),
                "learning_rate": learning_rate,
            },
            kpi={"validation_accuracy": logs.get("val_acc"), "validation_loss": logs.get("val_loss")},
        )
