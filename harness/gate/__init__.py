"""The gate: results (raw samples and the statistics derived from them), verdicts against a
baseline, the baseline store, the session that owns one run, and the report."""
