"""Integrity of the files this package reads (and their hashes, for provenance records): checkpoints and exported models are zip
archives that store a CRC-32 per entry, which neither `torch.load` nor `torch.jit.load`
checks; a file with flipped bytes would otherwise load and give other numbers."""

import hashlib
import zipfile


def sha256_of(path: str) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CorruptFileError(ValueError):
    """A zip archive whose contents do not match its stored checksums."""


def check_archive(path: str, what: str, fix: str) -> None:
    """Raise CorruptFileError naming ``what`` and ``fix`` when ``path`` is a damaged zip
    archive; a file that is not a zip archive at all is left to the caller's loader."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise CorruptFileError(f"{what} {path} is damaged ({exc}); {fix}") from None
    if bad is not None:
        raise CorruptFileError(f"{what} {path} is damaged: the checksum of its entry {bad!r} does not match its "
                               f"contents (the file was corrupted on disk, in a copy or a transfer); {fix}")
