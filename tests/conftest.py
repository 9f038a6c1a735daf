"""Shared test set-up. Real servers come from tests.support.fixtures (started once per
session on free loopback ports); fault injection from tests.support.faultserver."""

pytest_plugins = ["tests.support.fixtures"]
