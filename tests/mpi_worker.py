"""Run by test_distributed.py under ``mpiexec -n 2``: distributed training cases, results to files.

Usage: mpiexec -n N python mpi_worker.py CASES.json OUTDIR

Each case (a dict in CASES.json) names the data file every rank takes its shard of (load_shard), the
network and the fit arguments. Every rank writes OUTDIR/NAME.rankR.npz: its parameters, the history's
per-epoch loss and the shuffling seed. Nothing is printed.
A case whose fit asks for the gradient_norms metric also writes OUTDIR/NAME.rankR.norms.npy: the
history's gradient_norm_m, one row per layer m.
"""
import json
import sys

import numpy as np
from mpi4py import MPI

import fastbp
from fastbp import distributed


def main(cases_path, outdir):
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    with open(cases_path) as f:
        cases = json.load(f)
    available = fastbp.available_backends()
    for case in cases:
        if case["backend"] not in available:  # the test skips it
            continue
        weights = {}
        if case.get("weighted"):  # the data file's column "w": the samples' weights
            X, y, weights["sample_weight"] = distributed.load_shard(case["data"], rank, size,
                                                                    ("X", "y", "w"))
        else:
            X, y = distributed.load_shard(case["data"], rank, size)
        net = fastbp.Network(case["layers"], case["activation"], loss=case["loss"],
                             dtype=case["dtype"], backend=case["backend"],
                             seed=case["init_seed"] if rank == 0 else rank + 1000)  # rank 0's wins
        history = distributed.fit(net, X, y, comm, **case["fit"], **weights)
        np.savez(f"{outdir}/{case['name']}.rank{rank}.npz", parameters=net.parameters,
                 loss=np.array(history["loss"]), seed=np.array(history.seed),
                 comm_share=np.array(history["comm_share"]))
        if "gradient_norms" in case["fit"].get("metrics", ()):  # one row per layer, a column per epoch
            np.save(f"{outdir}/{case['name']}.rank{rank}.norms.npy",
                    np.array([history[f"gradient_norm_{m}"] for m in range(1, len(case["layers"]))]))


if __name__ == "__main__":
    main(*sys.argv[1:3])
