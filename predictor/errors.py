"""Exceptions raised by latpred's library code; one root, translated where they enter."""
from __future__ import annotations


class LatpredError(Exception):
    """Root of every error latpred raises on purpose."""


class InvalidModelError(LatpredError):
    """The file is not a loadable ONNX model (not protobuf, truncated, bad opset, symbolic shapes)."""


class UnsupportedKernelError(LatpredError):
    """A kernel's op type has no measurement, regressor or fallback."""


class UnknownDeviceError(LatpredError):
    """No device of that name in the store."""


class ConfigError(LatpredError):
    """A compression config is malformed or out of range."""


class StoreError(LatpredError):
    """The database could not be reached or written."""


class NoMeasurementsError(LatpredError):
    """The device has no measurements to predict from."""

    @classmethod
    def for_device(cls, device: str) -> NoMeasurementsError:
        return cls(f"no measurements for device {device}: run `latpred profile --device {device}` first")


class DeviceConflictError(LatpredError):
    """A device registered again with another runtime, thread count or kernel profile than it has."""


class InvalidRecordError(LatpredError, ValueError):
    """A value given to the store is malformed or implausible; nothing was written.

    Also a ValueError: callers that catch ValueError around store writes keep working.
    """


class UnknownRunError(LatpredError, ValueError):
    """No profiling run of that id in the store (a ValueError as the store's other refusals are)."""


class ServiceError(LatpredError):
    """A latpred service did not answer a request as asked (predictor.client)."""


class ServiceUnreachable(ServiceError):
    """No connection to the service (refused, no route, no connection within the timeout): nothing was sent."""


class ServiceTimeout(ServiceError):
    """The service was reached but its answer did not come within the timeout: it may have done the work."""

    def __init__(self, message: str, timeout_s: float | None = None) -> None:
        super().__init__(message)
        self.timeout_s = timeout_s


class ServiceHTTPError(ServiceError):
    """The service answered with an error status: `status_code`, its message (`detail`) and, in a problem+json
    answer, its machine-readable `code`."""

    def __init__(self, status_code: int, detail: str, code: str | None = None) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.code = code
