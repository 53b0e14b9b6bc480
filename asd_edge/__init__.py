"""asd-edge: unattended acoustic anomaly detection for machines, at the edge.

Where things are. The top level reads as the architecture diagram (ARCHITECTURE.md):
the data path from the microphone to a decision, then the service around it; the
five wings each have a face (their ``__init__``).

The data path, in the order the audio flows::

    capture      PortAudio input stream (supervised, restarted); its callback only copies
    filesource   a recording played into the rings as if it were a microphone
    ring         the lock-free single-producer single-consumer ring of samples
    resample     rational resampling, of a stream and of a whole recording
    features     the project's one log-mel front end (numpy), shared with training
    modelspec    the model contract (ONNX metadata, optional bands and level), evidence
    detector     an ONNX model loaded, checked and scoring windows
    machine      whether the machine runs (window level, hold, hysteresis)
    decision     when scores become an event (threshold, k-of-n, hold, refractory)
    monitor      one channel + one model + one decision policy, ticked
    monitors     the monitors running now: start, swap, reload, describe
    alerts       events to alert payloads, each naming its clip; at start, the ends of the
                 alerts a killed daemon left open (status: interrupted)
    scoring      offline scoring through the same pipeline (``asd-edge score``)
    scoreindex   a score on one scale for every model (1 = the threshold in force)
    live         the live feed while someone watches (``cmd/live``): level and spectrum

The wings::

    mqtt/        MqttLink: alerts through the durable outbox at QoS 1, retained state,
                 Home Assistant discovery, commands (link, thread, messages, delivery,
                 outbox/: the file, its salvage, memory while the disk refuses it;
                 connection, client, backlog, topics, homeassistant, commands)
    modelstore/  ModelManager: which model each monitor runs; pushes, rollbacks, resets and
                 file swaps checked and stored (manager, worker, shared, slot, files,
                 checks, requests, signing, replay, reset, keyfiles; devicekey: the push
                 key read and each signature checked in a child process)
    clips/       the audio around each event: recorded on the tick, written by a thread,
                 kept within quota; what an alert says of its clip (types, recorder,
                 writer, retention, status, spectrogram, picture, painter: the picture
                 in a child process; lookup and sender:
                 an alert's clip found by its id and sent on ``cmd/clip``)
    learning/    the default kind (bandstat) and its fit, numpy only, shared with training;
                 learning a monitor's normal sound in the running daemon (learner,
                 session, job: the fit in a child process) or from recordings (cli)
                 (bandstat/, windows, recording, crossfit, calibration, inject, fitting,
                 contract)
    web/         the dashboard, ``asd-edge web``: its own process (the [web] extra), an
                 MQTT client and an HTTP server; never imported by the daemon (fleet,
                 bridge, hub, server, access, auth, actions, metrics, clipfiles, i18n,
                 app, cli)

The service::

    daemon       the loop (a tick when a window is due) and the lifecycle: start, reload, stop
    assembly     the daemon's parts as a configuration describes them, wired together
    cli          the ``asd-edge`` command line: run, check-config, devices, score, record,
                 learn, feedback, web
    __main__     the console script: pins the math thread pools (and, for run, tunes
                 malloc), then runs the CLI
    runtime      process-wide settings applied before numpy and onnxruntime load (math
                 threads, malloc, telemetry off)
    config/      the YAML configuration parsed into frozen dataclasses (sections, loading;
                 editing: one value written into the file in place)
    schema       the strict, generic YAML-to-dataclass validator under config
    inputhealth  input alerts: a lost stream, silence, clipping, overruns
    statedisk    the state directory refusing writes (read-only, full): the ``disk`` alert
    meters       audio levels per channel, the process's CPU and memory
    telemetry    the health payload, each monitor's state, the model topic, status line
    sdnotify     readiness, status and watchdog notices to systemd
    logs         structlog set-up: JSON lines under systemd, console on a TTY
    errors       the exception tree (every public exception, drawn in its docstring)

Small shared pieces, one of each::

    audiofile/   reading any audio file, a WAV in blocks (reader, wav, ffmpeg); 16-bit WAV
    durable      atomic file replacement with fsync; a regular file read within a size bound
    jsonvalues   JSON-safe values and ISO-8601 UTC time stamps (daemon and training)
    backoff      capped, jittered retry delays (capture restarts, broker reconnects)
    faces        package faces that import their names at first use (PEP 562)
    childproc    rare work in a short-lived child interpreter (a clip's picture, a push's
                 signature), so the daemon never loads Pillow or cryptography
    onnxrt       onnxruntime, imported by every module that needs it with its telemetry off
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
