"""Signing at the source: cosign-format image signatures, an OpenSSF model signature
and SLSA provenance in a DSSE envelope pushed as an OCI 1.1 referrer. Offline: keys only,
no transparency log (Rekor) and no certificate authority (Fulcio)."""
