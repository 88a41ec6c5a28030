"""Check an adapter folder against a base model and list every problem, not just the first.

This runs model.loading.check_load, the very function load_adapter runs, so verify says
"ok" exactly when load_adapter (with the same strict_base / allow_nonfinite) would succeed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from adapterkit.errors import AdapterError
from adapterkit.io.fingerprint import BaseFingerprint, base_fingerprint
from adapterkit.io.folder import read_adapter_folder
from adapterkit.model.loading import check_load


@dataclass
class AdapterFitReport:
    """Whether one adapter folder fits one base model, and every reason it does not."""

    folder: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked_tensors: int = 0
    # The typed error load_adapter would raise, when it would raise.
    error: AdapterError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def verify_adapter(folder: str | Path, model: nn.Module, *, strict_base: bool = True,
                   allow_nonfinite: bool = False) -> AdapterFitReport:
    """Everything that would stop (or silently spoil) loading `folder` onto `model`. A base other
    than the recorded one is a problem by default (`strict_base=True`): verify is asked about
    one base, and an adapter trained on another gives wrong outputs even when its shapes fit."""
    report = AdapterFitReport(str(folder))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            files = read_adapter_folder(folder)
            check = check_load(model, files, base_fingerprint(model), strict_base=strict_base,
                               allow_nonfinite=allow_nonfinite)
        except AdapterError as exc:
            report.error = exc
            report.problems.append(str(exc))
            return report
    report.warnings += [str(w.message) for w in caught] + check.warnings
    if BaseFingerprint.from_metadata(files.metadata) is None:
        report.warnings.append("no base fingerprint recorded (saved by PEFT or an older tool): base not checked")
    report.problems += check.lines
    report.checked_tensors = len(files.tensors)
    if check.problems:
        report.error = check.problems[0]
    return report
