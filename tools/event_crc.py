"""A fast CRC-32C for TensorBoard's event files, which otherwise checksum every byte in pure Python.

Without TensorFlow installed, TensorBoard's record writer computes each event's masked CRC-32C one
byte at a time in Python: about 140 us for one 64-bin histogram event on a 2-core CPU. Its writer
thread then holds the GIL long enough to stall the training loop. CRC-32C is linear over GF(2), so
the checksum of n bytes is the XOR of one table entry per byte (the byte's contribution from its
distance to the end of the message), plus a term for the initial value: a numpy gather and an XOR
reduction, about 20x faster; a long message (an image, the model graph) goes MAX_LEN bytes at a time.
"""
from functools import lru_cache

import numpy as np

POLY = 0x82F63B78      # CRC-32C (Castagnoli), bit-reversed
MAX_LEN = 4096         # bytes per chunk; the table is MAX_LEN x 256 uint32 = 4 MiB, built once
MASK_DELTA = 0xA282EAD8


@lru_cache(maxsize=1)
def _tables() -> tuple[np.ndarray, np.ndarray]:
    """byte_table: the classic CRC-32C table; contribution[k, b]: the change to the state from byte b
    followed by k more bytes."""
    byte_table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        byte_table = np.where(byte_table & 1, (byte_table >> 1) ^ np.uint32(POLY), byte_table >> 1).astype(np.uint32)
    contribution = np.empty((MAX_LEN, 256), dtype=np.uint32)
    contribution[0] = byte_table
    for k in range(1, MAX_LEN):  # one byte more: state -> table[state & 0xff] ^ (state >> 8)
        prev = contribution[k - 1]
        contribution[k] = byte_table[prev & 0xFF] ^ (prev >> 8)
    return byte_table, contribution


def crc32c(data: bytes) -> int:
    """CRC-32C of `data`, MAX_LEN bytes at a time.

    For a chunk of m >= 4 bytes, the state after it is the XOR of each byte's contribution, plus the
    incoming state carried through m bytes, which is what the state's own 4 bytes would contribute
    as the chunk's first bytes.
    """
    byte_table, contribution = _tables()
    state = 0xFFFFFFFF
    for start in range(0, len(data), MAX_LEN):
        chunk = np.frombuffer(data, dtype=np.uint8, count=min(MAX_LEN, len(data) - start), offset=start)
        m = len(chunk)
        if m < 4:  # a short tail: byte by byte
            for byte in chunk.tolist():
                state = int(byte_table[(state ^ byte) & 0xFF]) ^ (state >> 8)
            continue
        carried = np.frombuffer(state.to_bytes(4, "little"), dtype=np.uint8)
        positions = np.arange(m - 1, -1, -1)
        state = int(np.bitwise_xor.reduce(contribution[positions, chunk])
                    ^ np.bitwise_xor.reduce(contribution[positions[:4], carried]))
    return state ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TensorBoard's record checksum: CRC-32C rotated right by 15 bits plus a constant."""
    x = crc32c(data)
    return (((x >> 15) | (x << 17)) + MASK_DELTA) & 0xFFFFFFFF


def speed_up_event_writing() -> None:
    """Make TensorBoard's record writer use `masked_crc32c` (same checksums, computed faster)."""
    from tensorboard.summary.writer import record_writer

    _tables()  # built now (about 16 ms), not in the writer thread in the middle of training
    record_writer.masked_crc32c = masked_crc32c
