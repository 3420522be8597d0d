"""The API's route table: one module per group of routes, each a list of `ApiRoute`."""

from __future__ import annotations

from ..context import ApiRoute
from . import deadletters, fleet, jobs, operations, reads, resources

ROUTES: list[ApiRoute] = [
    *resources.ROUTES,
    *reads.ROUTES,
    *operations.ROUTES,
    *jobs.ROUTES,
    *fleet.ROUTES,
    *deadletters.ROUTES,
]
