"""Real audio files made in the tests, of known durations: WAV by the `wave` module (a
440 Hz tone), MP3 by Debian's `lame` encoding such a WAV (installed by .ci/run)."""

from __future__ import annotations

import io
import math
import shutil
import struct
import subprocess
import tempfile
import wave
from functools import lru_cache
from pathlib import Path

__all__ = ["mp3", "wav"]


@lru_cache(maxsize=32)  # bytes: safe to share between tests
def wav(seconds: float, rate: int = 16_000) -> bytes:
    """A mono 16-bit WAV of exactly `seconds` (a whole number of samples at `rate`)."""
    frames = round(seconds * rate)
    tone = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                    for i in range(rate))  # one second, repeated
    pcm = (tone * (frames // rate + 1))[:frames * 2]
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


@lru_cache(maxsize=32)
def mp3(seconds: float, rate: int = 16_000) -> bytes:
    """An MP3 (64 kbit/s CBR, with LAME's header giving the exact length) of `seconds`."""
    lame = shutil.which("lame")
    assert lame is not None, "the MP3 tests need Debian's `lame` (see .ci/run)"
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.wav", Path(tmp) / "out.mp3"
        src.write_bytes(wav(seconds, rate))
        subprocess.run([lame, "--quiet", "-b", "64", str(src), str(dst)], check=True,
                       timeout=60)
        return dst.read_bytes()
