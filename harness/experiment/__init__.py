"""The experiment around RAD: profiles and their strict validation (`config`, `profiles/`), the
steps store and the runner of `rad reproduce` (`steps`, `runner`), and each stage as a
resumable, validated job the runner and the CLI share: selection (`prompt_sets`, `selection`),
hybrid folders (`hybrid_folder`), distillation (`distill_data`, `distill`, `distill_compare`)
and benches (`bench_runtime`, `bench_throughput`); `estimate` sizes every step for
`rad reproduce --dry-run`."""
