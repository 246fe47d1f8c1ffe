"""The registry of cloaked objects (schema `pgcloak` in each database).

`names`: physical names and PostgreSQL's implicit-name rules; `model`: data types;
`store`: the in-memory `Registry` and the writes that change it; `db`/`install`:
psycopg helpers and `pgcloak init`; `tools`: `pgcloak map` / `pgcloak schema`;
`unmask`: physical -> semantic text substitution. See docs/cloaking-design.md.
"""
