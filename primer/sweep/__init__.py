"""Sweeps of DVC experiments on a Ray cluster (`python -m primer.sweep`, docs/cluster.md): `submit` runs on the
machine that starts the sweep, `node` on each Ray node; `ray_login` and `dvc_temp_runs` adapt Ray's token login and
DVC's temporary workspaces where their public APIs fall short."""
