"""Damaged copies of zip archives (exported models, checkpoints) for the integrity tests."""

import zipfile


def flip_bit(src: str, dst: str, part: str = "/data/") -> str:
    """Copy SRC to DST with one bit flipped in the middle of the stored bytes of its largest
    zip entry whose name contains PART ('/data/': a tensor, stored; '/code/': code, deflated).
    Returns the entry's name."""
    with zipfile.ZipFile(src) as archive:
        info = max((i for i in archive.infolist() if part in i.filename), key=lambda i: i.compress_size)
    raw = bytearray(open(src, "rb").read())
    at = info.header_offset
    name_len = int.from_bytes(raw[at + 26: at + 28], "little")
    extra_len = int.from_bytes(raw[at + 28: at + 30], "little")
    raw[at + 30 + name_len + extra_len + info.compress_size // 2] ^= 0x10
    with open(dst, "wb") as f:
        f.write(bytes(raw))
    return info.filename
