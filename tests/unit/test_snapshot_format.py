"""The persistent COW format, byte for byte (dm-spec §5.12 and the §8.1 vector)."""

from __future__ import annotations

import struct

import pytest

from dmfuse.targets.snapshot import cow_format as fmt


def test_header_round_trip_and_bytes() -> None:
    chunk0 = bytearray(b"\xaa" * 4096)
    fmt.encode_header(chunk0, valid=True, chunk_sectors=8)
    assert bytes(chunk0[:16]) == bytes.fromhex("536e417001000000010000000800000000"[:32])
    assert chunk0[16:] == b"\xaa" * (4096 - 16)  # the rest of the chunk is left as it was
    assert fmt.decode_header(chunk0) == fmt.Header(valid=True, version=1, chunk_sectors=8)
    fmt.encode_header(chunk0, valid=False, chunk_sectors=8)
    assert fmt.decode_header(chunk0) == fmt.Header(valid=False, version=1, chunk_sectors=8)


def test_fresh_and_corrupt_headers() -> None:
    assert fmt.decode_header(bytes(512)) is None
    with pytest.raises(fmt.CorruptStore):
        fmt.decode_header(b"XXXX" + bytes(508))


def test_layout_arithmetic() -> None:
    per = fmt.exceptions_per_area(8 * 512)
    assert per == 256
    assert [fmt.area_location(i, per) for i in range(3)] == [1, 258, 515]
    assert fmt.skip_metadata(2, per) == 2
    assert fmt.skip_metadata(258, per) == 259  # an area position is never handed out
    assert fmt.metadata_sectors(0, 16) == 32  # fresh snapshot, chunk 16: "32/<cow> 32"


def test_area_decode_terminator_and_full() -> None:
    area = bytearray(64)  # chunk of 64 bytes: 4 records
    fmt.put_record(area, 0, 3, 2)
    fmt.put_record(area, 1, 7, 3)
    assert fmt.decode_area(area, 4) == ([(3, 2), (7, 3)], False)
    fmt.put_record(area, 2, 9, 4)
    fmt.put_record(area, 3, 1, 5)
    assert fmt.decode_area(area, 4) == ([(3, 2), (7, 3), (9, 4), (1, 5)], True)
    assert struct.unpack_from("<QQ", area, 16) == (7, 3)
