"""Run by the OpenMM close-atoms tests in a subprocess (the TorchForce and native plugin
warnings go to the process's stderr, written by C++):

    python close_atoms_run.py ROUTE MODEL PLATFORM      ROUTE: torchforce | native

Three atoms, three Contexts in turn ('normal': no pair closer than 0.2 nm; 'close' and
'close-new-context': two atoms 0.02 nm apart), three steps each. Before each Context it
writes '@@LABEL' to stderr (and '@@end' last), so the caller can count the warnings each
produced; it prints 'LABEL DISTANCE' (nm, after the steps) for each on stdout.
"""

import sys

import numpy as np
import openmm
import torch


def run_split(route: str, model: str, platform: str):
    """Run this script in a subprocess: (distances {label: nm}, stderr per label)."""
    import subprocess

    run = subprocess.run([sys.executable, __file__, route, model, platform], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    distances = {label: float(d) for label, d in (line.split() for line in run.stdout.strip().splitlines())}
    parts = {}
    for chunk in run.stderr.split("@@")[1:]:
        label, _, body = chunk.partition("\n")
        parts[label.strip()] = body
    assert set(parts) == {"normal", "close", "close-new-context", "end"}, run.stderr[-2000:]
    return distances, parts


def main(route: str, model: str, platform: str) -> None:
    torch.set_num_threads(1)
    if route == "torchforce":
        from equiformer.openmm import create_torch_force as make
    else:
        from equiformer.openmm.native import EquiformerForce as make
    system = openmm.System()
    for _ in range(3):
        system.addParticle(63.546)
    system.addForce(make(model, ["Cu"] * 3))
    for label, d in (("normal", 0.2), ("close", 0.02), ("close-new-context", 0.02)):
        sys.stderr.write("@@" + label + "\n")
        sys.stderr.flush()
        integrator = openmm.VerletIntegrator(0.0005)
        context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform))
        context.setPositions(np.array([[0.0, 0.0, 0.0], [d, 0.0, 0.0], [0.1, 0.2, 0.0]]))
        integrator.step(3)
        p = context.getState(getPositions=True).getPositions(asNumpy=True)._value
        print(label, repr(float(np.linalg.norm(p[1] - p[0]))), flush=True)
    sys.stderr.write("@@end\n")
    sys.stderr.flush()


if __name__ == "__main__":
    main(*sys.argv[1:4])
