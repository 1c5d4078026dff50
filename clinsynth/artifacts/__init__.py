"""One typed reader/writer per artifact that crosses a stage boundary.

A stage reads its inputs only through these modules and the folders its context hands it
(`ctx.input_dir("sample")`), never by importing another stage's module or knowing the run
folder layout. The record set (ingest -> sample) lives in `clinsynth.records`.

| artifact | writer stage | module |
|---|---|---|
| records/*.parquet | ingest | clinsynth.records |
| specs/specs.parquet | sample | clinsynth.artifacts.specs |
| letters/shard-*.jsonl + stats/ | generate | clinsynth.artifacts.letters |
| verification.jsonl + report | verify | clinsynth.artifacts.verdicts |

Each reader also checks what it reads against the writer's report before the reading stage
writes anything (`clinsynth.artifacts.checks.UpstreamError`: the upstream folder, what was
expected, what was found, what to do): `records.check_records` (ingest_report.json rows),
`specs.check_specs` / `check_shard_recipes` (sample_report.json specs), `letters.check_letters`
(every shard's stats once, one letter line per spec).
"""
