"""Experiments built from several real runs: policy comparison and convergence calibration.

`fedsllm.experiments.compare` runs one scenario under several allocation
policies and sets measured against predicted delay reductions;
`fedsllm.experiments.calibrate` fits the convergence constants a and v of
docs/MODEL.md section 4 from short fixed-step runs; `scenario_toml` writes a
scenario dict back as TOML. Starting processes is fedsllm.launch's job,
measuring a single run fedsllm.report's and fedsllm.summary's.
"""
