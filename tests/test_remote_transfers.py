"""Transfers to and from S3 (moto on loopback): truncated downloads, parallel parts, commits
under S3's single-copy limit, and abandoned multipart uploads (issue 27, part 1).

Sizes stay at a few MiB with small parts: moto keeps every object in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkeep import ModelPersistence
from modelkeep.errors import StorageError
from modelkeep.storage import verified
from tests.s3_server import FaultProxy, S3Bucket, s3_options

MiB = 1 << 20

pytestmark = pytest.mark.s3


def _proxied(bucket: S3Bucket, proxy: FaultProxy, tmp_path: Path, **kwargs: Any) -> ModelPersistence:
    p = ModelPersistence(
        models_dir=bucket.url(),
        registry_url=f"sqlite:///{tmp_path / 'registry.db'}",
        storage_options=s3_options(proxy.endpoint_url),
        **kwargs,
    )
    p.ensure_registry()
    return p


def _model(n_bytes: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {"weights": rng.integers(0, 1 << 62, size=n_bytes // 8, dtype=np.int64), "seed": seed}


@pytest.mark.parametrize("cut", [0, 100, 3 * MiB + 5])
def test_truncated_download_is_a_storage_error_and_frees_its_buffers(
    cut: int, s3_bucket: S3Bucket, fault_proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GET whose body stops early (the server promised more bytes) is one StorageError,
    not a BufferError from the verified-read path, and leaves no buffer mapped."""
    p = _proxied(s3_bucket, fault_proxy, tmp_path)
    model = _model(6 * MiB)
    rec = p.save_version(model, "m", compress=False)
    assert rec.artifact is not None
    key = rec.artifact.key
    fault_proxy.truncate = lambda m, path: cut if m == "GET" and key in path else None
    made: list[Any] = []
    original = verified.private_buffer

    def recorded(size: int, *, dense: bool = True) -> Any:
        made.append(original(size, dense=dense))
        return made[-1]

    monkeypatch.setattr(verified, "private_buffer", recorded)
    for _ in range(3):
        with pytest.raises(StorageError) as info:
            p.load("m", rec.version)
        assert "\n" not in str(info.value)
        assert "BufferError" not in repr(info.value.__cause__)
    assert fault_proxy.injected  # the fault really happened
    assert made and all(buf.closed for buf in made)  # unmapped at once, not left to the collector
    fault_proxy.truncate = lambda m, path: None
    loaded = p.load("m", rec.version)
    assert np.array_equal(loaded["weights"], model["weights"])
    p.close()
