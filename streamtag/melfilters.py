"""librosa's mel filterbank in plain numpy, so the tag path does not import librosa (scipy.signal + numba).

Importing librosa costs about as much as importing torch on a cold start, and the front end needs nothing from
it but ``librosa.filters.mel``. :func:`mel_filterbank` repeats that function's arithmetic operation for
operation (librosa 0.10: Slaney or HTK mel scale, "slaney" area normalisation or none, float32 weights), so
its output is bit-identical (tests/test_musicnn_fast.py checks it against librosa when librosa is installed).
A numeric ``norm`` (an l_p normalisation) is rare; it is handed to librosa itself.
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError

__all__ = ["mel_filterbank"]

_F_SP = 200.0 / 3  # Hz per mel below 1 kHz (Slaney's linear region)
_MIN_LOG_HZ = 1000.0  # Hz where Slaney's log region begins
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # the same point in mels
_LOGSTEP = np.log(6.4) / 27.0  # ln(Hz ratio) per mel in the log region


def _hz_to_mel(hz: float, *, htk: bool) -> float:
    if htk:
        return float(2595.0 * np.log10(1.0 + hz / 700.0))
    mel = hz / _F_SP
    return float(_MIN_LOG_MEL + np.log(hz / _MIN_LOG_HZ) / _LOGSTEP) if hz >= _MIN_LOG_HZ else mel


def _mel_to_hz(mels: np.ndarray, *, htk: bool) -> np.ndarray:
    if htk:
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    freqs = _F_SP * mels
    log_t = mels >= _MIN_LOG_MEL
    freqs[log_t] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels[log_t] - _MIN_LOG_MEL))
    return freqs


def mel_filterbank(
    *, sr: float, n_fft: int, n_mels: int = 128, fmin: float = 0.0, fmax: float | None = None, htk: bool = False,
    norm: str | float | None = "slaney",
) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) float32 mel filterbank, equal to ``librosa.filters.mel`` with the same arguments."""
    if norm is not None and norm != "slaney":
        if isinstance(norm, str):
            raise ConfigError(f"unknown mel filter norm {norm!r}; use 'slaney', a number (an l_p norm) or null")
        import librosa  # an l_p norm: rare, and librosa's own util.normalize defines it

        return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=float(norm))
    if fmax is None:
        fmax = float(sr) / 2
    n_mels = int(n_mels)
    weights = np.zeros((n_mels, int(1 + n_fft // 2)), dtype=np.float32)
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)  # (1 + n_fft // 2,) Hz, centre of each FFT bin
    mels = np.linspace(_hz_to_mel(fmin, htk=htk), _hz_to_mel(fmax, htk=htk), n_mels + 2)
    mel_f = _mel_to_hz(mels, htk=htk)  # (n_mels + 2,) Hz, band edges and centres
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)  # (n_mels + 2, 1 + n_fft // 2)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    if norm == "slaney":
        enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])  # constant energy per band
        weights *= enorm[:, np.newaxis]
    return weights
