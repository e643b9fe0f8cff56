"""Presentation: JSON in, files out, and no torch. `rad report` rebuilds results.json, the
leaderboard and the plots of a run folder (`run_report`, `verdict`, `tables`, `plots`); `rad
gate` compares two results.json files (`gate`). Everything here reads facts (task labels,
headline metrics, which row is the reference) from the run's JSON, never from the registries,
and the code version that keys cached steps leaves this folder out.
"""
