"""Rational resampling: of a whole recording at once, and of a stream, with the same output."""

from __future__ import annotations

from math import ceil, gcd

import numpy as np
import numpy.typing as npt

__all__ = ["StreamResampler", "resample_whole"]

FloatArray = npt.NDArray[np.float32]


def resample_whole(samples: npt.ArrayLike, in_rate: int, out_rate: int) -> FloatArray:
    """A whole recording at ``out_rate``: ``scipy.signal.resample_poly`` with its default
    filter, computed in float64, returned as float32 (the same rates: the samples as
    float32). ``StreamResampler`` gives the same samples block by block; training and
    the tools use this one, so that they see what the daemon hears."""
    x = np.asarray(samples, dtype=np.float32)
    if in_rate == out_rate:
        return x
    if in_rate <= 0 or out_rate <= 0:
        raise ValueError(f"rates must be positive, got {in_rate} -> {out_rate}")
    from scipy import signal  # only a rate conversion pays for scipy.signal

    g = gcd(in_rate, out_rate)
    y = signal.resample_poly(x.astype(np.float64), out_rate // g, in_rate // g)
    return np.asarray(y, dtype=np.float32)


class StreamResampler:
    """Resample a stream fed in blocks of any size from ``in_rate`` to ``out_rate``.

    The output equals ``scipy.signal.resample_poly(whole_stream, up, down)`` (up to
    float rounding), only delayed by ``delay_in`` input samples: each output sample
    is emitted once the input it depends on has arrived. So the daemon (blocks as
    PortAudio delivers them) and ``asd-edge score`` (a file in one go) compute the
    same samples. The same rate in and out passes blocks through untouched.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"rates must be positive, got {in_rate} -> {out_rate}")
        g = gcd(in_rate, out_rate)
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.up = out_rate // g
        self.down = in_rate // g
        self.passthrough = self.up == self.down
        half_len = 10 * max(self.up, self.down)
        self._taps = np.zeros(0, dtype=np.float64)
        if not self.passthrough:  # the same filter resample_poly designs by default
            from scipy import signal  # only a rate conversion pays for scipy.signal

            self._resample_poly = signal.resample_poly
            self._taps = np.asarray(
                signal.firwin(
                    2 * half_len + 1, 1.0 / max(self.up, self.down), window=("kaiser", 5.0)
                ),
                dtype=np.float64,
            )
        # Input samples each side of an output sample that its value depends on,
        # rounded up to a multiple of ``down`` so that segments start on the grid
        # where input and output samples coincide.
        pad = ceil(half_len / self.up) + 1
        self.delay_in = 0 if self.passthrough else -(-pad // self.down) * self.down
        self._buf: npt.NDArray[np.float64] = np.zeros(0, dtype=np.float64)
        self._buf_start = 0  # stream index (input samples) of _buf[0]
        self._out_next = 0  # stream index (output samples) of the next sample to emit

    def reset(self) -> None:
        """Start a new stream (after a gap), as if freshly constructed."""
        self._buf = np.zeros(0, dtype=np.float64)
        self._buf_start = 0
        self._out_next = 0

    def flush(self) -> FloatArray:
        """End of the stream: return the held-back samples, as resample_poly would
        give them for the whole stream (zeros assumed past the end)."""
        if self.passthrough:
            return np.zeros(0, dtype=np.float32)
        total_in = self._buf_start + self._buf.shape[0]
        total_out = -(-total_in * self.up // self.down)
        pad = np.zeros(self.delay_in + self.down, dtype=np.float32)
        tail = self(pad)
        return tail[: max(0, total_out - (self._out_next - tail.shape[0]))]

    def __call__(self, block: npt.ArrayLike) -> FloatArray:
        """Feed the next input block; return every output sample now complete."""
        x = np.asarray(block, dtype=np.float32)
        if self.passthrough:
            return x
        self._buf = np.concatenate([self._buf, x.astype(np.float64)])
        available = self._buf_start + self._buf.shape[0]
        # Output j sits at input position j * down / up and needs input up to
        # delay_in samples after it.
        out_stop = max(0, (available - self.delay_in) * self.up // self.down + 1)
        if out_stop <= self._out_next:
            return np.zeros(0, dtype=np.float32)
        seg_start = self._buf_start
        seg = self._buf
        y = self._resample_poly(seg, self.up, self.down, window=self._taps)
        first = self._out_next - seg_start * self.up // self.down
        out = np.asarray(y[first : first + out_stop - self._out_next], dtype=np.float32)
        self._out_next = out_stop
        # Keep the input the next outputs still depend on, from a grid point.
        keep_from = self._out_next * self.down // self.up - self.delay_in
        keep_from = max(self._buf_start, (keep_from // self.down) * self.down)
        self._buf = self._buf[keep_from - self._buf_start :]
        self._buf_start = keep_from
        return out
