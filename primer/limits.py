"""The bounds of one request to a trained model, shared by the served models, the `primer` command
and the params that set their defaults."""

MAX_REQUEST_BYTES = 64 * 2**20  # photos per request to the served CNN, checked before any is decoded
MAX_PHOTOS = 1_000  # rows per request to the served CNN, checked before any is decoded
MAX_LENGTH = 10_000  # characters one generation may add
MAX_BEAM_SIZE = 64  # beams of one translation
