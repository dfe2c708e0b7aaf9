"""Host-side checks of encoded images: structure and (height, width, channels) from the headers, without decoding.

The reader checks every image of an episode the first time it reads the episode (``rlds.validate_episode``), so a
truncated or corrupt image is an error naming the dataset, file, episode, step and key (or a counted skip with
``skip_bad``) instead of a TensorFlow decode failure deep inside the input pipeline that names nothing.

JPEG: start-of-image marker, every header segment up to start-of-scan walked with its length checked, Huffman
(DHT) and quantisation (DQT) tables consistent with their segment lengths, a frame header (SOFn) with non-zero
size and 1, 3 or 4 components, end-of-image marker at the end (a truncated file lacks it; libjpeg refuses those).
PNG: signature, every chunk's length and CRC, IHDR first (size, colour type -> channels), IEND last.
GIF, BMP and WebP (also decodable by ``tf.io.decode_image``) get a signature and size check only. Entropy-coded
JPEG data is not checked: libjpeg decodes damage there with a warning (wrong pixels, no error), as every decoder.
Cost: a few microseconds per image (no pixel data is touched).
"""

from __future__ import annotations

import struct
import zlib

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # colour type -> channels (3 = palette, decoded to RGB)


class ImageHeaderError(ValueError):
  """The bytes are not a complete, decodable image (the message says what is wrong)."""


def _jpeg(data: bytes) -> tuple[int, int, int]:
  n = len(data)
  if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
    raise ImageHeaderError(f"JPEG has no end-of-image marker: truncated ({n} bytes)")
  pos, size = 2, None
  while True:
    while pos < n and data[pos] == 0xFF and pos + 1 < n and data[pos + 1] == 0xFF:
      pos += 1  # fill bytes
    if pos + 4 > n or data[pos] != 0xFF:
      raise ImageHeaderError(f"JPEG header is corrupt at byte {pos} (no marker where one must be)")
    marker = data[pos + 1]
    if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
      pos += 2
      continue
    if marker == 0xD9:
      raise ImageHeaderError("JPEG ends before its image data (end-of-image before start-of-scan)")
    (length,) = struct.unpack_from(">H", data, pos + 2)
    body, end = pos + 4, pos + 2 + length
    if length < 2 or end > n:
      raise ImageHeaderError(f"JPEG segment 0xFF{marker:02X} at byte {pos} has a bad length {length}")
    if marker in _SOF:
      if length < 8:
        raise ImageHeaderError("JPEG frame header is too short")
      height, width, components = struct.unpack_from(">HHB", data, body + 1)
      if height == 0 or width == 0 or components not in (1, 3, 4):
        raise ImageHeaderError(f"JPEG frame header is invalid: {height}x{width} with {components} components")
      size = (height, width, 1 if components == 1 else 3)
    elif marker == 0xC4:  # DHT: (class/id, 16 counts, symbols) tables
      p = body
      while p < end:
        if p + 17 > end:
          raise ImageHeaderError("JPEG Huffman table is truncated")
        symbols = sum(data[p + 1:p + 17])
        if symbols > 256 or p + 17 + symbols > end:
          raise ImageHeaderError("JPEG Huffman table is corrupt")
        p += 17 + symbols
    elif marker == 0xDB:  # DQT: (precision/id, 64 or 128 bytes) tables
      p = body
      while p < end:
        p += 1 + (128 if data[p] >> 4 else 64)
      if p != end:
        raise ImageHeaderError("JPEG quantisation table is corrupt")
    elif marker == 0xDA:  # start of scan: the header ends here
      components = data[body] if body < n else 0
      if length != 6 + 2 * components or components == 0:
        raise ImageHeaderError("JPEG scan header is corrupt")
      if size is None:
        raise ImageHeaderError("JPEG has no frame header before its image data")
      return size
    pos = end


def _png(data: bytes) -> tuple[int, int, int]:
  pos, n, size = 8, len(data), None
  while pos < n:
    if pos + 12 > n:
      raise ImageHeaderError(f"PNG is truncated at byte {pos}")
    length, kind = struct.unpack_from(">I4s", data, pos)
    end = pos + 12 + length
    if end > n:
      raise ImageHeaderError(f"PNG chunk {kind!r} at byte {pos} runs past the end: truncated")
    (crc,) = struct.unpack_from(">I", data, end - 4)
    if zlib.crc32(data[pos + 4:end - 4]) & 0xFFFFFFFF != crc:
      raise ImageHeaderError(f"PNG chunk {kind!r} at byte {pos} fails its CRC check")
    if size is None:
      if kind != b"IHDR" or length != 13:
        raise ImageHeaderError("PNG does not start with its IHDR header")
      width, height, _, colour = struct.unpack_from(">IIBB", data, pos + 8)
      if width == 0 or height == 0 or colour not in _PNG_CHANNELS:
        raise ImageHeaderError(f"PNG header is invalid: {height}x{width}, colour type {colour}")
      size = (height, width, _PNG_CHANNELS[colour])
    if kind == b"IEND":
      return size
    pos = end
  raise ImageHeaderError("PNG has no IEND chunk: truncated")


def image_size(data: bytes) -> tuple[int, int, int]:
  """(height, width, channels) of an encoded image, after checking its structure (module docstring).

  Raises:
    ImageHeaderError: empty bytes, an unknown format, or a truncated / corrupt image.
  """
  if not data:
    raise ImageHeaderError("empty image bytes")
  if data[:2] == b"\xff\xd8":
    return _jpeg(data)
  if data[:8] == _PNG_SIGNATURE:
    return _png(data)
  if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
    width, height = struct.unpack_from("<HH", data, 6)
    return height, width, 3
  if data[:2] == b"BM" and len(data) >= 26:
    width, height = struct.unpack_from("<ii", data, 18)
    return abs(height), width, 3
  if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
    return 0, 0, 3  # size not parsed: checked when decoded
  raise ImageHeaderError(f"not a JPEG, PNG, GIF, BMP or WebP image (starts with {data[:8]!r})")
