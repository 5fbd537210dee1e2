"""Read an MLflow model folder: its ``MLmodel`` file, its signature, and its sklearn model.

The sklearn flavor's file is loaded under modelkeep's safe-loading policy and never with
MLflow: ``pickle``/``cloudpickle`` files go through :meth:`ModelPersistence.import_file`'s
restricted unpickler (a global on the deny-list, ``os.system`` say, is refused before it is
imported), ``skops`` files through the skops format, which builds trusted types only (the
``skops_trusted_types`` an ``MLmodel`` may list are ignored: a file cannot vouch for itself). A
folder whose flavor cannot be loaded this way (a pyfunc ``PythonModel``, custom ``code``)
is kept whole, as a :class:`~modelkeep.formats.archive.ModelArchive`.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import MetadataError, SerializationError
from ..formats.archive import ModelArchive

#: sklearn ``serialization_format`` values loaded natively (MLflow's default is cloudpickle).
PICKLE_FORMATS = ("pickle", "cloudpickle")
SKOPS_FORMAT = "skops"


@dataclass(frozen=True)
class MlModel:
    """What the importer needs from an ``MLmodel`` file."""

    folder: Path
    flavors: dict[str, Any]
    signature: dict[str, Any] | None
    mlflow_version: str | None
    model_id: str | None

    @property
    def native(self) -> bool:
        """Whether the sklearn flavor can be loaded natively (no custom code shipped with it)."""
        sk = self.flavors.get("sklearn")
        return (
            isinstance(sk, dict)
            and not sk.get("code")
            and sk.get("serialization_format", "cloudpickle") in (*PICKLE_FORMATS, SKOPS_FORMAT)
            and isinstance(sk.get("pickled_model"), str)
        )

    @property
    def flavor(self) -> str:
        return "sklearn" if "sklearn" in self.flavors else next(iter(self.flavors), "unknown")

    @property
    def serialization_format(self) -> str | None:
        sk = self.flavors.get("sklearn")
        return str(sk.get("serialization_format", "cloudpickle")) if isinstance(sk, dict) else None

    def model_file(self) -> Path:
        """The sklearn flavor's model file, which must lie inside the folder."""
        name = str(self.flavors["sklearn"]["pickled_model"])
        path = (self.folder / name).resolve()
        if not path.is_relative_to(self.folder.resolve()):
            raise MetadataError(f"MLmodel in {str(self.folder)!r} names a model file outside its folder: {name!r}")
        return path


def read_mlmodel(folder: Path) -> MlModel:
    """Parse ``folder/MLmodel``; :class:`MetadataError` if it is not a valid MLmodel file."""
    try:
        data = yaml.safe_load((folder / "MLmodel").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise MetadataError(f"cannot read {str(folder / 'MLmodel')!r}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("flavors"), dict):
        raise MetadataError(f"{str(folder / 'MLmodel')!r} has no flavors: not an MLflow model")
    return MlModel(
        folder=folder,
        flavors=data["flavors"],
        signature=_signature(data.get("signature")),
        mlflow_version=data.get("mlflow_version"),
        model_id=data.get("model_id"),
    )


def _signature(raw: Any) -> dict[str, Any] | None:
    """MLflow keeps ``inputs``/``outputs``/``params`` as JSON strings inside the YAML: decode them."""
    if not isinstance(raw, dict):
        return None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, str):
            with contextlib.suppress(ValueError):  # not JSON: keep the string
                value = json.loads(value)
        out[str(key)] = value
    return out


def load_skops(path: Path, trusted: list[str]) -> Any:
    """Load a ``.skops`` file with modelkeep's skops format (trusted types only)."""
    from ..formats import get_format

    with open(path, "rb") as f:
        try:
            return get_format("skops").load(f, None, trusted=trusted)
        except (OSError, SerializationError):
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("modelkeep"):
                raise
            raise SerializationError(f"cannot read the skops file {str(path)!r}: {exc}") from exc


def archive(model: MlModel) -> ModelArchive:
    """The whole model folder, packed, for flavors modelkeep does not load."""
    return ModelArchive.from_folder(model.folder, "mlflow-model", flavors=sorted(model.flavors))
