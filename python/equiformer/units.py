"""The one table of units in Python: every route converts with these factors (CODATA 2018).
The C++ runtime has the same numbers (`equiformer::energy_conversion`, `length_conversion`)."""

EV_IN_KJ_PER_MOL = 96.48533212331002
KCAL_IN_KJ = 4.184
EV_IN_KCAL_PER_MOL = EV_IN_KJ_PER_MOL / KCAL_IN_KJ

# one model energy unit expressed in eV, and one model length unit in Angstrom
ENERGY_IN_EV = {"eV": 1.0, "kcal/mol": 1.0 / EV_IN_KCAL_PER_MOL, "kJ/mol": 1.0 / EV_IN_KJ_PER_MOL}
LENGTH_IN_ANGSTROM = {"Angstrom": 1.0, "nm": 10.0}


def energy_factor(unit: str, to: str = "eV") -> float:
    """Multiply an energy in `unit` by this to get it in `to`."""
    for u in (unit, to):
        if u not in ENERGY_IN_EV:
            raise ValueError(f"unknown energy unit {u!r}; known: {', '.join(ENERGY_IN_EV)}")
    return ENERGY_IN_EV[unit] / ENERGY_IN_EV[to]


def length_factor(unit: str, to: str = "Angstrom") -> float:
    """Multiply a length in `unit` by this to get it in `to`."""
    for u in (unit, to):
        if u not in LENGTH_IN_ANGSTROM:
            raise ValueError(f"unknown length unit {u!r}; known: {', '.join(LENGTH_IN_ANGSTROM)}")
    return LENGTH_IN_ANGSTROM[unit] / LENGTH_IN_ANGSTROM[to]
