"""Pickle-free formats: each framework's own stable model format.

These formats never unpickle. An artifact holds only the bytes the framework
itself writes for a trained model, so it stays loadable by later releases of
the framework (a pickle often is not) and loading it cannot run code:

=============  ==========================  ==========================================
format         saves                        on disk
=============  ==========================  ==========================================
``xgboost``    ``Booster``, ``XGB*`` models   UBJSON (``save_model``), ``.ubj``
``lightgbm``   ``lightgbm.Booster``           LightGBM model text, ``.lgb.txt``
``catboost``   ``CatBoost*`` models           CatBoost binary ``.cbm``
``torch``      a state_dict (str -> tensor)   safetensors, ``.safetensors``
``keras``      a Keras 3 model                ``.keras`` zip, loaded with ``safe_mode=True``
=============  ==========================  ==========================================

Which class to rebuild is recorded in ``extra["class"]`` and checked against a
fixed list per format at load, so an artifact cannot name arbitrary code.
``serialization_format="auto"`` picks one of these when the object is of a
supported kind, and ``joblib`` otherwise (:func:`choose_format`).
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from ..errors import ConfigError, SerializationError, UnsafeModelError
from . import native_checks
from .base import Format, Writable

CHUNK = 1 << 20


@contextmanager
def _scratch(suffix: str) -> Iterator[str]:
    """A private temporary file name (the frameworks below read and write paths)."""
    folder = tempfile.mkdtemp(prefix="modelkeep-")
    try:
        yield os.path.join(folder, f"model{suffix}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _copy_out(path: str, file: Writable) -> None:
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK):
            file.write(chunk)


def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


def _mro_names(obj: Any) -> set[str]:
    return {f"{c.__module__.split('.', 1)[0]}.{c.__name__}" for c in type(obj).__mro__}


class FrameworkFormat(Format):
    """Shared parts: no compression of our own, and a fixed list of loadable classes."""

    general_purpose = False

    suffix = ""
    #: ``"module:qualname"`` of every class :meth:`load` may rebuild.
    classes: tuple[str, ...] = ()

    def extension(self, compression: str | None) -> str:
        return self.suffix

    def normalize_compression(self, compress: Any) -> str | None:
        if compress is None or compress is False or compress is True or compress == 0:
            return None  # the framework's own format is stored as the framework writes it
        raise ConfigError(
            f"the {self.name} format stores the framework's own model file as is; use compress=True or False",
            cli={"use compress=True or False": "use --compress or --no-compress"},
        )

    def accepts(self, obj: Any) -> bool:
        """Whether this format can store ``obj`` without loss."""
        return _class_path(obj) in self.classes

    def _check_accepts(self, obj: Any) -> None:
        if not self.accepts(obj):
            raise SerializationError(
                f"the {self.name} format cannot store a {type(obj).__module__}.{type(obj).__qualname__}; "
                f"it stores {', '.join(c.replace(':', '.') for c in self.classes)} "
                "(use serialization_format='auto' to pick a format per object)"
            )

    def _class(self, options: dict[str, Any]) -> Any:
        """The recorded class, refused unless it is on this format's list."""
        recorded = str((options.get("extra") or {}).get("class", ""))
        if recorded not in self.classes:
            raise UnsafeModelError(f"refused to load: the {self.name} artifact names the class {recorded!r}")
        module, qualname = recorded.split(":")
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj


class XGBoostFormat(FrameworkFormat):
    """xgboost's UBJSON model format (``save_model``), for ``Booster`` and the scikit-learn API."""

    name = "xgboost"
    suffix = ".ubj"
    classes = (
        "xgboost.core:Booster",
        "xgboost.sklearn:XGBClassifier",
        "xgboost.sklearn:XGBRegressor",
        "xgboost.sklearn:XGBRanker",
        "xgboost.sklearn:XGBRFClassifier",
        "xgboost.sklearn:XGBRFRegressor",
    )

    def dump(self, obj: Any, file: Writable, compression: str | None, **options: Any) -> dict[str, Any] | None:
        self._check_accepts(obj)
        with _scratch(self.suffix) as path:
            obj.save_model(path)
            _copy_out(path, file)
        return {"class": _class_path(obj)}

    def load(self, file: IO[bytes], compression: str | None, **options: Any) -> Any:
        cls = self._class(options)
        data = bytearray(file.read())
        native_checks.check_xgboost_model(data)
        model = cls()
        model.load_model(data)
        return model


class LightGBMFormat(FrameworkFormat):
    """LightGBM's model text (``Booster.model_to_string``). The scikit-learn wrappers
    (``LGBMClassifier``, ...) are not covered: save them with joblib, or save ``model.booster_``."""

    name = "lightgbm"
    suffix = ".lgb.txt"
    classes = ("lightgbm.basic:Booster",)

    def dump(self, obj: Any, file: Writable, compression: str | None, **options: Any) -> dict[str, Any] | None:
        self._check_accepts(obj)
        file.write(obj.model_to_string().encode())
        return {"class": _class_path(obj)}

    def load(self, file: IO[bytes], compression: str | None, **options: Any) -> Any:
        cls = self._class(options)
        try:
            text = file.read().decode()
        except UnicodeDecodeError:
            raise UnsafeModelError("refused to load: the LightGBM model string is not UTF-8 text") from None
        native_checks.check_lightgbm_model(text)
        return cls(model_str=text)


class CatBoostFormat(FrameworkFormat):
    """CatBoost's binary ``.cbm`` model."""

    name = "catboost"
    suffix = ".cbm"
    classes = (
        "catboost.core:CatBoost",
        "catboost.core:CatBoostClassifier",
        "catboost.core:CatBoostRegressor",
        "catboost.core:CatBoostRanker",
    )

    def dump(self, obj: Any, file: Writable, compression: str | None, **options: Any) -> dict[str, Any] | None:
        self._check_accepts(obj)
        with _scratch(self.suffix) as path:
            obj.save_model(path, format="cbm")
            _copy_out(path, file)
        return {"class": _class_path(obj)}

    def load(self, file: IO[bytes], compression: str | None, **options: Any) -> Any:
        cls = self._class(options)
        data = file.read()
        native_checks.check_catboost_model(data)
        return cls().load_model(blob=data)


def _is_state_dict(obj: Any) -> bool:
    """A non-empty ``dict`` of ``str -> torch.Tensor`` (torch is never imported here)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(obj, dict) or not obj:
        return False
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


class TorchFormat(FrameworkFormat):
    """A torch state_dict (``str -> Tensor``) as safetensors: raw tensor bytes plus a JSON
    header; loading reads weights only. Tensors that share memory are stored as copies.
    A module itself is code, not data: save ``model.state_dict()`` and rebuild the module."""

    name = "torch"
    suffix = ".safetensors"
    classes = ("builtins:dict", "collections:OrderedDict")

    def accepts(self, obj: Any) -> bool:
        return _class_path(obj) in self.classes and _is_state_dict(obj)

    def dump(self, obj: Any, file: Writable, compression: str | None, **options: Any) -> dict[str, Any] | None:
        from safetensors.torch import save

        self._check_accepts(obj)
        tensors = {k: v.detach().contiguous().clone() for k, v in obj.items()}
        file.write(save(tensors))
        return {"class": _class_path(obj), "order": list(obj)}

    def load(self, file: IO[bytes], compression: str | None, **options: Any) -> Any:
        from safetensors.torch import load

        cls = self._class(options)
        data = file.read()
        native_checks.check_safetensors(data)
        tensors = load(data)
        order = (options.get("extra") or {}).get("order") or list(tensors)
        return cls((k, tensors[k]) for k in order)


class KerasFormat(FrameworkFormat):
    """Keras 3's ``.keras`` zip (config JSON + weights), loaded with ``safe_mode=True``:
    no pickle, and no lambda layers' code is ever deserialized."""

    name = "keras"
    suffix = ".keras"

    def accepts(self, obj: Any) -> bool:
        return "keras.Model" in _mro_names(obj)

    def dump(self, obj: Any, file: Writable, compression: str | None, **options: Any) -> dict[str, Any] | None:
        import keras

        self._check_accepts(obj)
        with _scratch(self.suffix) as path:
            keras.saving.save_model(obj, path)
            _copy_out(path, file)
        return {"class": _class_path(obj)}

    def load(self, file: IO[bytes], compression: str | None, **options: Any) -> Any:
        import keras

        data = file.read()
        native_checks.check_keras_archive(data)
        with _scratch(self.suffix) as path:
            with open(path, "wb") as out:
                out.write(data)
            return keras.saving.load_model(path, safe_mode=True)


#: Formats ``auto`` may pick, most specific first.
AUTO_CANDIDATES = ("xgboost", "lightgbm", "catboost", "keras", "torch")
#: Top-level module a candidate's objects come from (checked before importing anything).
_CANDIDATE_TOPS = {"xgboost": "xgboost", "lightgbm": "lightgbm", "catboost": "catboost", "keras": "keras"}


def choose_format(obj: Any, fallback: str = "joblib") -> str:
    """The safest format that stores ``obj`` without loss: the framework's own
    pickle-free format when ``obj`` is a kind it covers, else ``fallback``."""
    from . import get_format

    tops = {c.__module__.split(".", 1)[0] for c in type(obj).__mro__}
    for name in AUTO_CANDIDATES:
        top = _CANDIDATE_TOPS.get(name)
        if top is not None and top not in tops:
            continue
        if name == "torch" and not isinstance(obj, dict):
            continue
        try:
            fmt = get_format(name)
        except ImportError:  # BackendUnavailableError: the format's package is missing
            continue
        if isinstance(fmt, FrameworkFormat) and fmt.accepts(obj):
            return name
    return fallback


class AutoFormat(Format):
    """Not a format of its own: ``save`` replaces it with :func:`choose_format`'s pick."""

    general_purpose = False

    name = "auto"

    def extension(self, compression: str | None) -> str:  # pragma: no cover - never written
        raise NotImplementedError("auto resolves to a concrete format before saving")

    def normalize_compression(self, compress: Any) -> str | None:
        from . import get_format

        return get_format("joblib").normalize_compression(compress)

    def dump(self, obj: Any, file: Writable, compression: str | None, **options: Any) -> dict[str, Any] | None:
        raise NotImplementedError("auto resolves to a concrete format before saving")  # pragma: no cover

    def load(self, file: IO[bytes], compression: str | None, **options: Any) -> Any:
        raise NotImplementedError("no artifact is stored as 'auto'")  # pragma: no cover


def resolve_auto(obj: Any, compress: Any) -> tuple[Format, str | None]:
    """For ``serialization_format="auto"``: the chosen format and its normalized compression."""
    from . import get_format

    fmt = get_format(choose_format(obj))
    return fmt, fmt.normalize_compression(compress)
