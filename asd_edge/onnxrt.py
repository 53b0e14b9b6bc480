"""onnxruntime, imported once for the whole project with its telemetry off.

onnxruntime's official Linux builds (1.32.0 here) carry Microsoft's 1DS telemetry
(onnxruntime pull request 27379): importing the package writes
``~/.cache/Microsoft/DeveloperTools/.onnxruntime/deviceid`` and ``onnxruntime.db`` (or
under ``$XDG_CACHE_HOME``) and starts an uploader that looks up Microsoft's event
collector, unless ``ORT_DISABLE_TELEMETRY=1`` is in the environment before the import:
onnxruntime reads it once, at load, and ``disable_telemetry_events()`` afterwards keeps
the device id and the uploader. Every module of the project imports onnxruntime from
here, so the daemon, ``asd-train``, the demo and the tests write nothing into HOME and
call nobody. A value already in the environment is kept (``ORT_DISABLE_TELEMETRY=0``
turns the telemetry back on); child processes inherit it.
"""

from __future__ import annotations

from .runtime import opt_out_of_telemetry

opt_out_of_telemetry()

import onnxruntime as ort  # noqa: E402  (after the switch: onnxruntime reads it at import)

__all__ = ["ort"]
