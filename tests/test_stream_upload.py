"""The upload side of ``--stream``: a layer whose digest is not known until its last byte
but whose size is (uncompressed) goes up with Content-Length, each chunk sent as it is;
chunked transfer framed every chunk in a fresh copy (urllib3's b"%x\\r\\n%b\\r\\n"), a
second pass over the model's bytes on the thread that feeds the upload."""

from __future__ import annotations

import hashlib

import requests

from modelcar_builder.registry import RegistryClient
from modelcar_builder.registry.uploads import _Sized
from tests.support.registry import RegistryInstance

PARTS = [b"a" * 100_000, memoryview(b"b" * 50_000), b"", b"c"]
DATA = b"".join(bytes(p) for p in PARTS)


def test_a_sized_body_goes_with_content_length_not_chunked() -> None:
    prepared = requests.Request(
        "PATCH", "http://127.0.0.1:9/v2/x/blobs/uploads/1", data=_Sized(iter(PARTS), len(DATA))
    ).prepare()
    assert prepared.headers["Content-Length"] == str(len(DATA))
    assert "Transfer-Encoding" not in prepared.headers
    unsized = requests.Request("PATCH", "http://127.0.0.1:9/", data=iter(PARTS)).prepare()
    assert unsized.headers["Transfer-Encoding"] == "chunked"  # what a size avoids


def test_a_stream_of_known_size_reaches_the_registry(session_registry: RegistryInstance) -> None:
    plain = True if session_registry.plain_http else None
    ca = str(session_registry.ca_file) if session_registry.ca_file else None
    with RegistryClient(session_registry.host, None, plain_http=plain, ca_file=ca) as client:
        digest, size = client.upload_blob_stream("s/sized", iter(PARTS), len(DATA))
        assert (digest, size) == (f"sha256:{hashlib.sha256(DATA).hexdigest()}", len(DATA))
        assert b"".join(client.get_blob("s/sized", digest)) == DATA
