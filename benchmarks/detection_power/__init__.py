"""Detection power of the regression gate: how often it cries wolf, and how often it catches a
real regression, measured with the measurement and verdict code the `perf` fixture uses.

For three metrics -- a bf16 GEMM's TFLOP/s, a training step's time and the step's peak allocated
memory -- the benchmark records a baseline the way `--perf-update-baselines` does (one
measurement with the fixture's default `TimingPolicy`), then re-measures `--repeats` times under
each condition: unchanged, and with real extra work injected worth 3%, 5% and 10% of the
baseline (an extra GEMM whose standalone time is that fraction, or an extra tensor of that
fraction of the peak held through the step). Conditions are interleaved round-robin so that slow
drift of the GPU lands on every condition alike. Every raw sample goes to the JSON, so the
verdict statistics can be re-run offline for other tolerances and alphas (`--analyse`).

The A/B phase (`--metrics ab`, not in a default run) measures the plugin's A/B confirmation
instead: base (the unchanged GEMM) and head (with the injected extra GEMM) run alternately in
rounds, judged by the paired verdict with the plugin's early stop; every run median is stored.

    python -m benchmarks.detection_power --out results/detection_power.json
    python -m benchmarks.detection_power --analyse results/detection_power.json --tolerance-grid
    python -m benchmarks.detection_power --metrics ab --out results/dp_ab.json

    design.py      conditions and targets, repeats and policies, the sizes per device
    injections.py  the injected regressions (extra GEMM, held allocation) and their calibration
    bench.py       taking one measurement, the baseline, the round-robin repetitions
    phases.py      the GEMM, training-step and memory phases
    ab_phase.py    the A/B phase: the paired verdict of the plugin's A/B confirmation
    ab_rounds.py   one A/B comparison through harness.gate.ab.run_ab, in this process
    fidelity.py    the fixture's clock against triton's do_bench
    document.py    the versioned JSON results document
    analysis.py    judging every repetition with the plugin's verdict, counted per condition
    report.py      the printed tables
    run.py, cli.py one run on one device; the command line
"""
