"""Teacher data (TD): the teacher transcribes an audio pool, filters catch bad pseudo-labels.

- ``shards``: sharding by duration-sorted batch, the resumable progress file, the teacher's raw
  records (through ``stages.models.transcribe``), the output row format.
- ``filters``: the quality filters (empty, unfinished, repetition, low_logprob,
  high_error_rate) and error counting against a pool reference.
- ``summary``: additive counts per shard, derived rates, the markdown view.
- ``merge``: gathering shards into one manifest in a deterministic order, with consistency
  checks across the shard reports.

Stages: ``python -m stages.teacher_data`` (one shard) and ``python -m stages.td_merge``.
"""
