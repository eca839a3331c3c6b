import ase.io
import pytest

from train_helpers import emt_copper


@pytest.fixture(scope="session")
def cu_xyz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "cu.xyz"
    ase.io.write(path, emt_copper(12))
    return path
