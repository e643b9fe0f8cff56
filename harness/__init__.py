"""rad-harness: the experiment around RAD, in stage packages (imports flow one way, down):

    cli/         the `rad` command, one module per command group
    experiment/  profiles, the runner, and each stage as a resumable job
    tasks/       evaluation: one module per task, lm-eval backend, code-execution sandbox
    models.py    named models and folders -> loaded runtime models with tokenizers
    report/      results JSON -> tables, plots, verdicts, gate (torch-free)
    common/      errors, atomic files, provenance (torch-free)
"""
