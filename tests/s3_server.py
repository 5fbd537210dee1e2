"""S3 on loopback for tests: a moto server, a fresh bucket per test, and a fault proxy.

Registered from ``conftest.py`` with ``pytest_plugins = ["tests.s3_server"]``.

* ``moto_endpoint`` (session): a ``ThreadedMotoServer`` on ``127.0.0.1`` and a
  free port; dummy AWS credentials are put in the environment (and any real
  AWS config is hidden) for the whole session.
* ``s3_bucket``: an empty bucket with a unique name, emptied and removed after
  the test. ``s3_bucket.url`` / ``.storage_options`` go straight into
  ``ModelPersistence(models_dir=..., storage_options=...)``.
* ``fault_proxy``: an HTTP proxy in front of moto that can answer chosen
  requests with an S3 ``5xx`` error instead of forwarding them, cut a body short,
  hold requests, count how many are in flight at once, and refuse a single
  ``CopyObject`` above a size limit (S3's is 5 GiB; tests lower it). The proxy itself is in
  ``tests/s3_proxy.py`` (no pytest), which the benchmarks run too.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.s3_proxy import Fault, FaultProxy, s3_rules

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "modelkeep-test",
    "AWS_SECRET_ACCESS_KEY": "modelkeep-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
#: Fail fast in tests: botocore retries a failed request at most once.
FAST_RETRIES = {"retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 5, "read_timeout": 30}


def s3_options(endpoint_url: str, **extra: Any) -> dict[str, Any]:
    """``storage_options`` for s3fs against ``endpoint_url``."""
    return {"client_kwargs": {"endpoint_url": endpoint_url}, "config_kwargs": dict(FAST_RETRIES), **extra}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The URL of a moto S3 server on loopback, running for the whole session."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    saved = {k: os.environ.get(k) for k in [*AWS_ENV, "AWS_PROFILE", "AWS_SESSION_TOKEN"]}
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.update(AWS_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class S3Bucket:
    """An empty bucket on the moto server."""

    name: str
    endpoint_url: str
    client: Any = field(repr=False)

    @property
    def storage_options(self) -> dict[str, Any]:
        return s3_options(self.endpoint_url)

    def url(self, prefix: str = "models") -> str:
        return f"s3://{self.name}/{prefix}" if prefix else f"s3://{self.name}"

    def object_keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket, straight from the server."""
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)

    def pending_uploads(self) -> list[str]:
        """Keys of multipart uploads started but neither completed nor aborted."""
        res = self.client.list_multipart_uploads(Bucket=self.name)
        return sorted(u["Key"] for u in res.get("Uploads", []))


def _client(endpoint_url: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> Iterator[S3Bucket]:
    """A fresh, empty bucket; emptied and deleted after the test (moto keeps data in memory)."""
    client = _client(moto_endpoint)
    name = f"mk-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    bucket = S3Bucket(name, moto_endpoint, client)
    yield bucket
    for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
        client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    for key in bucket.object_keys():
        client.delete_object(Bucket=name, Key=key)
    client.delete_bucket(Bucket=name)


@pytest.fixture
def fault_proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` in front of the session's moto server."""
    proxy = FaultProxy(moto_endpoint).start()
    yield proxy
    proxy.stop()


__all__ = ["AWS_ENV", "Fault", "FaultProxy", "S3Bucket", "s3_options", "s3_rules"]
