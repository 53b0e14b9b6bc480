"""The learning wing: normal sound of a machine to a calibrated ``bandstat`` model, with
numpy, scipy and onnx only, so that the device learns it itself (``asd-edge learn``) and a
workstation fits the very same kind (``asd-train fit --model auto``).

- ``bandstat``: the detector (statistics of a window's log-mel bands, a distance to
  normal and the loudness deviation) and its contract ONNX graph.
- ``windows``: normal sound cut into windows: a whole stream (``Featurizer``), or blocks
  kept as statistics in constant memory (``Collector``), saved and loaded as ``.npz``.
- ``crossfit`` and ``calibration``: thresholds cross-fitted by source recording at a
  false-alarm budget per day, with the daemon's own decision rule; ``inject``: the
  faults added to real recordings to say what a threshold catches.
- ``fitting``: ``fit_recordings``, the whole fit from recordings to a checked ONNX file.
- ``contract``: the model contract's metadata, versions and reproducible build times.

The daemon process itself imports none of it: the fit runs in a child process at low
priority, so that its memory and CPU never touch the tick (``asd_edge.learner``).
"""
