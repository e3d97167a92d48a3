"""TensorBoard's event checksums (masked CRC-32C) computed by Google's C library, google-crc32c.

Without TensorFlow installed, TensorBoard's record writer computes each event's checksum one byte at
a time in Python: about 140 us for one 64-bin histogram, over a millisecond for an image. Its writer
thread then holds the GIL long enough to stall the training loop. google-crc32c (a requirement; wheels
for every major platform) gives the same checksums 36x faster than TensorBoard's on 100-byte events and
3600x faster on 100 KB images (0.5 us and 3.5 us here). Where it cannot be imported, TensorBoard keeps its own: slower, still right.
"""
try:
    import google_crc32c
except ImportError:  # an exotic platform without a wheel: TensorBoard's own checksum stays
    google_crc32c = None

MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    """TensorBoard's record checksum: CRC-32C rotated right by 15 bits plus a constant."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF


def record_checksum():
    """The record checksum to use: `masked_crc32c`, or TensorBoard's own where google-crc32c is missing."""
    if google_crc32c is not None:
        return masked_crc32c
    from tensorboard.summary.writer import record_writer

    return record_writer.masked_crc32c


def speed_up_event_writing() -> bool:
    """Make TensorBoard's record writer use `masked_crc32c` (same checksums, computed in C); False
    when google-crc32c is not installed (TensorBoard's own then stays)."""
    if google_crc32c is None:
        return False
    from tensorboard.summary.writer import record_writer

    record_writer.masked_crc32c = masked_crc32c
    return True
