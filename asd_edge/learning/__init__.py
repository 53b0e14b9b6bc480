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
- ``learner`` and ``session``: learning in the running daemon (``cmd/learn``,
  ``cmd/feedback``): the tick hands the session thread its audio, the session writes it
  to ``job``, a child process at the lowest priority that collects and fits, and the
  model manager puts the model in service.
- ``cli``, ``offline``, ``remote``: ``asd-edge learn`` and ``feedback``, through the
  broker to the running daemon or ``--from`` recordings here.

The daemon imports only ``learner``, ``session``, ``job``'s frame format and the
calibration's settings: collecting (log-mel frames, statistics) and the fit (onnx,
scipy.stats, the cross-fitting's arrays) run in the child, so that their memory and CPU
never touch the daemon or its tick.
"""
