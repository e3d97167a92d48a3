"""A fast CRC-32C for TensorBoard's event files, which otherwise checksum every byte in pure Python.

Without TensorFlow installed, TensorBoard's record writer computes each event's masked CRC-32C one
byte at a time in Python: about 140 us for one 64-bin histogram event on a 2-core CPU. Its writer
thread then holds the GIL long enough to stall the training loop. CRC-32C is linear over GF(2), so
the checksum of n bytes is the XOR of one table entry per byte (the byte's contribution from its
distance to the end of the message), plus a term for the initial value: a numpy gather and an XOR
reduction, about 20x faster. Messages longer than MAX_LEN (a model graph) use TensorBoard's own code.
"""
from functools import lru_cache

import numpy as np

POLY = 0x82F63B78      # CRC-32C (Castagnoli), bit-reversed
MAX_LEN = 4096         # bytes; the table is MAX_LEN x 256 uint32 = 4 MiB, built on first use
MASK_DELTA = 0xA282EAD8


@lru_cache(maxsize=1)
def _tables() -> tuple[np.ndarray, np.ndarray]:
    """contribution[k, b]: state change from byte b followed by k more bytes; init[k]: the initial
    value 0xFFFFFFFF after k bytes of zeros."""
    byte_table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        byte_table = np.where(byte_table & 1, (byte_table >> 1) ^ np.uint32(POLY), byte_table >> 1).astype(np.uint32)
    contribution = np.empty((MAX_LEN, 256), dtype=np.uint32)
    init = np.empty(MAX_LEN + 1, dtype=np.uint32)
    contribution[0], init[0] = byte_table, 0xFFFFFFFF
    for k in range(1, MAX_LEN + 1):  # one zero byte more: state -> table[state & 0xff] ^ (state >> 8)
        if k < MAX_LEN:
            prev = contribution[k - 1]
            contribution[k] = byte_table[prev & 0xFF] ^ (prev >> 8)
        init[k] = byte_table[init[k - 1] & 0xFF] ^ (init[k - 1] >> 8)
    return contribution, init


def crc32c(data: bytes) -> int:
    """CRC-32C of `data` (for len(data) <= MAX_LEN)."""
    contribution, init = _tables()
    n = len(data)
    state = init[n]
    if n:
        positions = np.arange(n - 1, -1, -1)
        state = state ^ np.bitwise_xor.reduce(contribution[positions, np.frombuffer(data, dtype=np.uint8)])
    return int(state) ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TensorBoard's record checksum: CRC-32C rotated right by 15 bits plus a constant."""
    if len(data) > MAX_LEN:
        return _tensorboard_masked_crc32c(data)
    x = crc32c(data)
    return (((x >> 15) | (x << 17)) + MASK_DELTA) & 0xFFFFFFFF


def _tensorboard_masked_crc32c(data: bytes) -> int:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as slow

    return slow(data)


def speed_up_event_writing() -> None:
    """Make TensorBoard's record writer use `masked_crc32c` (same checksums, computed faster)."""
    from tensorboard.summary.writer import record_writer

    _tables()  # built now (about 16 ms), not in the writer thread in the middle of training
    record_writer.masked_crc32c = masked_crc32c
