"""Key management and the cryptography pgcloak stores in the database.

`keys`: the master key and its HKDF subkeys; `names`: AES-GCM envelopes for
semantic names and comments, HMAC lookups. Only `cryptography` primitives.
"""
