"""Per-step cost of the OpenMM routes against the bare model call.

    python -m equiformer.openmm.benchmark MODEL.pt --atoms 1000 [--platform CPU] [--threads 1]

Builds a random periodic cubic box of the model's species at `--density` atoms per nm^3,
and times (median over `--steps` calls / steps, after warm-up):
  bare model     the exported model's forward on a precomputed neighbor list;
  torch module   the TorchForce module called from Python (TorchScript neighbor list + model);
  torchforce     one VerletIntegrator step of a Context with the TorchForce;
  pythonforce    one step with the PythonForce (vesin neighbor list + model from Python).
  native         one step with the native plugin EquiformerForce (C++ cell list + runtime),
                 when the plugin is built (scripts/build_cpp.sh); --routes picks routes.
With --deviation-every N (a committee file) each route is timed instead as a Simulation, per
step over blocks of --steps steps (a multiple of N), plain and with a DeviationReporter every
N steps, the two alternating (best of --rounds each), in wall and in this process's CPU time;
then one step and one report alternately, --steps times (medians, CPU time): the reporter's
cost per step is report / (N x step), the figure that a busy machine disturbs least (the bare
model and torch module lines are skipped).
"""

import argparse
import time

import numpy as np


def _median_ms(fn, repeats):
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--atoms", type=int, default=1000)
    parser.add_argument("--density", type=float, default=100.0, help="atoms per nm^3 (water: ~100)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--platform", default="CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--routes", default="torchforce,pythonforce,native",
                        help="comma-separated OpenMM routes to time (torchforce, pythonforce, native)")
    parser.add_argument("--deviation-every", type=int, default=0,
                        help="committee files: also time steps with a DeviationReporter every N steps")
    parser.add_argument("--rounds", type=int, default=3, help="--deviation-every: blocks timed per variant")
    args = parser.parse_args(argv)

    import torch
    import openmm
    from equiformer.data.neighbors import neighbor_list
    from equiformer.model_info import ModelInfo
    from equiformer.openmm.common import prepare
    from equiformer.openmm.torchforce import build_module, create_torch_force
    from equiformer.openmm.pythonforce import create_python_force

    if args.threads:
        torch.set_num_threads(args.threads)
    species = ModelInfo.read(args.model).species_symbols
    rng = np.random.default_rng(0)
    length = (args.atoms / args.density) ** (1.0 / 3.0)
    box = np.eye(3) * length
    pos = rng.random((args.atoms, 3)) * length
    symbols = [species[k % len(species)] for k in range(args.atoms)]
    setup = prepare(args.model, symbols, periodic=True, box_vectors=box)
    print(f"{args.atoms} atoms, box {length:.3f} nm, cutoff {setup.cutoff_nm:.3f} nm, model dtype {setup.dtype}, "
          f"torch threads {torch.get_num_threads()}")

    model = torch.jit.load(args.model, map_location="cpu")
    points = pos * setup.nm_to_model
    ei, shifts, _ = neighbor_list(points, setup.info.cutoff, box * setup.nm_to_model, True)
    edge_index = torch.from_numpy(ei)
    edge_vectors = torch.tensor(points[ei[0]] - points[ei[1]] + shifts).to(setup.torch_dtype)
    species_t = torch.tensor(setup.species)
    print(f"  edges: {edge_index.shape[1]} ({edge_index.shape[1] / args.atoms:.1f} per atom)")
    results = {}
    if not args.deviation_every:
        results["bare model"] = _median_ms(lambda: model(species_t, edge_index, edge_vectors, args.atoms), args.steps)
        module = torch.jit.freeze(build_module(args.model, setup).eval())  # as openmm-torch runs it
        p = torch.tensor(pos, requires_grad=True)
        b = torch.tensor(box)
        results["torch module"] = _median_ms(lambda: module(p, b), args.steps)

    creators = {"torchforce": create_torch_force, "pythonforce": create_python_force}
    try:
        from equiformer.openmm.native import create_native_force
        creators["native"] = create_native_force
    except ImportError as exc:
        print(f"  (native plugin not available: {exc})")
    for name in args.routes.split(","):
        if name not in creators:
            continue
        create = creators[name]
        system = openmm.System()
        for _ in symbols:
            system.addParticle(12.0)
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
        system.addForce(create(args.model, symbols, box_vectors=box))
        integrator = openmm.VerletIntegrator(0.0001)
        if args.deviation_every:
            results.update(_deviation_cost(name, system, integrator, pos, args))
            continue
        context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(args.platform))
        context.setPositions(pos)
        results[f"{name} step ({args.platform})"] = _median_ms(lambda: integrator.step(1), args.steps)
    for key, value in results.items():
        print(f"  {key:28s} {value:9.3f} ms")
    return results


def _deviation_cost(name, system, integrator, pos, args):
    """ms per step of a Simulation without and with a DeviationReporter every N steps."""
    import os
    import tempfile

    import openmm
    import openmm.app as app

    from equiformer.openmm.deviation import DeviationReporter

    every = args.deviation_every
    steps = max(every, args.steps // every * every)
    topology = app.Topology()  # the reporter reads the System, not the Topology
    simulation = app.Simulation(topology, system, integrator, openmm.Platform.getPlatformByName(args.platform))
    simulation.context.setPositions(pos)
    with tempfile.TemporaryDirectory() as folder:
        reporter = DeviationReporter(os.path.join(folder, "devi.out"), every)
        simulation.reporters.append(reporter)
        simulation.step(every)  # warm-up, reporter bound and model loaded
        # wall time, and this process's CPU time (steadier on a shared machine: with one
        # torch thread it is the work done)
        best = {(variant, clock): float("inf") for variant in ("plain", "deviation") for clock in ("wall", "cpu")}
        for _ in range(args.rounds):
            for variant in ("plain", "deviation"):
                simulation.reporters = [reporter] if variant == "deviation" else []
                wall, cpu = time.perf_counter(), time.process_time()
                simulation.step(steps)
                for clock, spent in (("wall", time.perf_counter() - wall), ("cpu", time.process_time() - cpu)):
                    best[variant, clock] = min(best[variant, clock], 1e3 * spent / steps)
        simulation.reporters = []
        step_ms, report_ms = [], []
        for _ in range(args.steps):
            cpu = time.process_time()
            simulation.step(1)
            step_ms.append(1e3 * (time.process_time() - cpu))
            cpu = time.process_time()
            reporter.report(simulation, simulation.context.getState(getPositions=True))
            report_ms.append(1e3 * (time.process_time() - cpu))
        reporter.close()
    out = {f"{name} step ({args.platform}, Simulation, {clock})" if variant == "plain" else
           f"{name} step + deviation every {every} ({clock})": value for (variant, clock), value in best.items()}
    step, report = float(np.median(step_ms)), float(np.median(report_ms))
    out[f"{name} one step (cpu, median)"] = step
    out[f"{name} one report (cpu, median)"] = report
    print(f"  {name}: a report every {every} steps adds {100.0 * report / (every * step):.1f}% to a step")
    return out


if __name__ == "__main__":
    main()
