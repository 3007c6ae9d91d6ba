"""Shared fixtures: small real subsets of ../shared/data (copied to a temp folder) and tiny configs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from aoiflow.config import build_config

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


def shared_set(name: str) -> Path:
    root = SHARED / name
    if not root.is_dir():
        pytest.skip(f"real test images not available: {root} is missing (it sits beside the checkout)")
    return root


def _copy_some(src: Path, dst: Path, n: int) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.iterdir() if p.is_file())[:n]
    return [Path(shutil.copy(p, dst / p.name)) for p in files]


def make_tile_subset(root: Path) -> Path:
    """A handful of magnetic-tile images in MVTec layout: 12 train, 4 good, 3 blowhole and 3 crack with masks."""
    src = shared_set("magnetictile_tile")
    _copy_some(src / "train" / "good", root / "train" / "good", 12)
    _copy_some(src / "test" / "good", root / "test" / "good", 4)
    for kind in ("blowhole", "crack"):
        for img in _copy_some(src / "test" / kind, root / "test" / kind, 3):
            (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(src / "ground_truth" / kind / f"{img.stem}.png", root / "ground_truth" / kind)
    return root


@pytest.fixture
def tile_subset(tmp_path: Path) -> Path:
    return make_tile_subset(tmp_path / "tile")


@pytest.fixture(scope="module")
def module_tile_subset(tmp_path_factory) -> Path:
    """``tile_subset`` made once for a whole test module (for module-scoped trained runs)."""
    return make_tile_subset(tmp_path_factory.mktemp("tile"))


@pytest.fixture
def deeppcb_root() -> Path:
    """The shared DeepPCB set (read-only; boxes in annotations_bbox/defect); skips when absent."""
    return shared_set("deeppcb_pcb")


def make_tiny_config():
    """A config that trains in about a second on the CPU."""
    return build_config("ganomaly-ssim-ssim", overrides={
        "model": {"image_size": 32, "base_width": 8, "latent_size": 16},
        "train": {"epochs": 2, "batch_size": 4, "seed": 3, "val_fraction": 0.25},
        "loss": {"ssim_window": 7}, "scoring": {"ssim_window": 7}})


@pytest.fixture
def tiny_config():
    return make_tiny_config()


@pytest.fixture(scope="module")
def module_tiny_config():
    """``tiny_config`` shared by a module's module-scoped fixtures; tests that change settings
    take their own ``tiny_config``."""
    return make_tiny_config()


# --- the store's databases: a SQLite file, and the real PostgreSQL at $AOIFLOW_TEST_PG_URL ------

def _service_missing(reason: str) -> None:
    """Skip, or fail where CI promised the services (AOIFLOW_REQUIRE_SERVICES=1)."""
    import os

    if os.environ.get("AOIFLOW_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}, and AOIFLOW_REQUIRE_SERVICES=1 says it must be there")
    pytest.skip(reason)


@pytest.fixture
def pg_url() -> str:
    """$AOIFLOW_TEST_PG_URL once the server answers (skips, or fails in CI, when it does not)."""
    import os

    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    url = os.environ.get("AOIFLOW_TEST_PG_URL")
    if not url:
        _service_missing("AOIFLOW_TEST_PG_URL is not set (a PostgreSQL URL for the store tests)")
    engine = sa.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except sa.exc.SQLAlchemyError as e:
        _service_missing(f"PostgreSQL at {sa.make_url(url).render_as_string(hide_password=True)} "
                         f"is unreachable: {str(getattr(e, 'orig', e)).strip().splitlines()[0]}")
    finally:
        engine.dispose()
    return url


@pytest.fixture
def pg_schema_url(pg_url: str):
    """A URL into a fresh, empty PostgreSQL schema of its own (search_path and application_name
    set to it), dropped afterwards: tests and parallel runs never see each other's rows."""
    import uuid

    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(pg_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    base = sa.make_url(pg_url)
    yield base.set(query={**base.query, "options": f"-csearch_path={schema}",
                          "application_name": schema}).render_as_string(hide_password=False)
    with admin.connect() as c:  # a store the test left open must not hold the schema
        c.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = :name"), {"name": schema})
        c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path: Path) -> str:
    """The store's URL, once on a SQLite file in tmp_path and once in a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'aoiflow.db'}"
    return request.getfixturevalue("pg_schema_url")
