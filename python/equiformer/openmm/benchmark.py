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
    results = {"bare model": _median_ms(lambda: model(species_t, edge_index, edge_vectors, args.atoms), args.steps)}

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
        context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(args.platform))
        context.setPositions(pos)
        results[f"{name} step ({args.platform})"] = _median_ms(lambda: integrator.step(1), args.steps)
    for key, value in results.items():
        print(f"  {key:28s} {value:9.3f} ms")
    return results


if __name__ == "__main__":
    main()
