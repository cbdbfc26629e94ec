"""Many runs, many processes: one process per run (runlock), whether a run may resume with
its settings now (resume), a process's share of the queue (shares), the smoke run before
training (smoke), Slurm job arrays (slurm) and `python -m runner status` (status). The train
command that drives them is runner.cli."""
