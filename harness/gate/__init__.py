"""The gate: results (raw samples) and their statistics, the tolerance rule, verdicts against a
baseline, the baseline store and lookups in it, comparisons of two saved runs, the session that
owns one run, and the report with its number formatting."""
