"""The largest integers an input may carry: what the database columns and the libraries that
receive them hold. Request schemas bound every integer with these, so an out-of-range number is
a 422 that names the limit rather than an overflow deep inside a query or a job."""

from __future__ import annotations

# INTEGER columns (steps, counts, positions) on SQLite and PostgreSQL.
INT32_MAX = 2**31 - 1
# BIGINT columns, and LIMIT / OFFSET on both databases.
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# Training seeds reach numpy's generator, which takes 0 .. 2**32 - 1.
SEED_MAX = 2**32 - 1
