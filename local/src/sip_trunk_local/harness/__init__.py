"""The harness the tests and the benchmarks share: the product's rendered gateway config for a settings document
(`gateway`), the real ASL in moto's executor with the real handlers (`moto_sfn`), and a moto account with
everything the workflows touch (`world`). tests/support keeps their old names as aliases."""
