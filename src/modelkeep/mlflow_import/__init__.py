"""Import an MLflow model registry into modelkeep, reading MLflow's store directly.

Small modules, one job each: :mod:`.source` (the records), :mod:`.sql_reader` and
:mod:`.file_reader` (the two store layouts), :mod:`.locate` (where a version's model folder
is), :mod:`.mlmodel` (reading ``MLmodel`` and the sklearn file safely), :mod:`.importer`.
"""

from __future__ import annotations

from .importer import ImportedVersion, ImportReport, import_mlflow

__all__ = ["ImportReport", "ImportedVersion", "import_mlflow"]
