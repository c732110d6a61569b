"""How the runner shares its delivery slots out over its processes."""

from __future__ import annotations

import os

import pytest

from pymta.lib.config import Config
from pymta.qrunner import Runner
from pymta.remote import RemoteDelivery


def runner(tmp_path, **values) -> Runner:
    cfg = {"qrunner.processes": 0, "qrunner.concurrency": 8}
    cfg.update(values)
    run = Runner.__new__(Runner)  # only the config is asked here
    run.cfg = Config(cfg)
    return run


@pytest.mark.parametrize(
    ("processes", "concurrency", "expected"),
    [(1, 8, 1), (2, 8, 2), (4, 2, 2), (-3, 8, 1)],
)
def test_processes_are_at_most_the_deliveries_at_once(tmp_path, processes, concurrency, expected):
    run = runner(tmp_path, **{"qrunner.processes": processes, "qrunner.concurrency": concurrency})
    assert run.processes() == expected


def test_zero_processes_means_one_per_cpu_within_the_concurrency(tmp_path):
    assert runner(tmp_path, **{"qrunner.concurrency": 64}).processes() == (os.cpu_count() or 1)
    assert runner(tmp_path, **{"qrunner.concurrency": 1}).processes() == 1


@pytest.mark.parametrize(("limit", "share", "each"), [(10, 1, 10), (10, 2, 5), (10, 3, 3), (2, 4, 1)])
def test_destination_concurrency_is_shared_out_rounded_down(limit, share, each):
    cfg = Config({"qrunner.destination_concurrency": limit, "relay.helo_name": "", "hostname": "mx.example.test"})
    remote = RemoteDelivery(cfg, share)
    assert remote.per_destination == each
    assert remote._sem("mx.example.net")._initial_value == each  # noqa: SLF001 the semaphore itself
