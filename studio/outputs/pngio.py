"""PNG encoding with text chunks, and safe reading of image text metadata."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Mapping, Union

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .errors import MetadataError

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, BinaryIO]

#: Image modes Pillow can write as PNG without conversion.
PNG_MODES: frozenset[str] = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
#: Pillow refuses to read text chunks larger than this (ImageFile.SAFEBLOCK).
MAX_TEXT_CHUNK_CHARS = 1_000_000
#: Chunks stored compressed (zTXt/iTXt); "parameters" stays plain tEXt like A1111.
_COMPRESSED_KEYS = frozenset({"studio"})
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                Image.DecompressionBombError)


def encode_png(image: Image.Image, text: Mapping[str, str]) -> bytes:
    """Encode *image* as PNG bytes carrying *text* chunks (key -> value)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image is empty ({image.width}x{image.height})")
    if image.mode not in PNG_MODES:
        raise ValueError(
            f"image mode {image.mode!r} cannot be saved as PNG; convert it first, "
            f"e.g. image.convert('RGB') (supported: {', '.join(sorted(PNG_MODES))})"
        )
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        if len(value) > MAX_TEXT_CHUNK_CHARS:
            raise ValueError(
                f"PNG text chunk {key!r} is {len(value)} characters; the limit is "
                f"{MAX_TEXT_CHUNK_CHARS} (store references, not image data, in controls)"
            )
        info.add_text(key, value, zip=key in _COMPRESSED_KEYS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _read_source_bytes(source: Any) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise MetadataError(f"image file not found: {path}") from None
        except IsADirectoryError:
            raise MetadataError(f"expected an image file, got a directory: {path}") from None
        except OSError as exc:
            raise MetadataError(f"cannot read image file {path}: {exc.strerror or exc}") from None
    if hasattr(source, "read"):
        data = source.read()
        if isinstance(data, (bytes, bytearray)):
            return bytes(data)
    raise TypeError(
        "expected a file path, PNG bytes, a binary file object or a PIL.Image.Image, "
        f"got {type(source).__name__}"
    )


def _text_of(image: Image.Image) -> dict[str, str]:
    text = getattr(image, "text", None)  # PNG: includes chunks after IDAT (forces load)
    if not isinstance(text, Mapping):
        text = image.info
    return {str(key): value for key, value in text.items() if isinstance(value, str)}


def read_image_text(source: ImageSource, *, accepted: str) -> dict[str, str]:
    """All text metadata of an image, after checking the file is complete.

    *accepted* describes valid inputs; it is included in error messages.
    Raises :class:`MetadataError` for non-images, truncated or corrupt files.
    """
    # 1. in-memory images were decoded already: read their text directly
    if isinstance(source, Image.Image):
        return _text_of(source)

    # 2. files / bytes: identify and verify the whole file (CRCs, truncation)
    data = _read_source_bytes(source)
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()
    except UnidentifiedImageError:
        raise MetadataError(f"not an image file (unrecognised format); {accepted}") from None
    except _READ_ERRORS as exc:
        raise MetadataError(f"image is truncated or corrupt ({exc}); {accepted}") from None

    # 3. decode for real: verify() does not check compressed pixel data
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return _text_of(image)
    except _READ_ERRORS as exc:
        raise MetadataError(f"image is truncated or corrupt ({exc}); {accepted}") from None
