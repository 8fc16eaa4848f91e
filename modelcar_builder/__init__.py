"""modelcar-builder: turn a model into a verified KServe ModelCar OCI image."""

__version__ = "0.1.0"
