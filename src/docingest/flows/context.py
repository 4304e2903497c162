"""A run's context: what the ingest flow's steps share, fixed once the run is resolved.

The flow resolves its run once (``RunSpec``: collection, store, source, model, profile, options), picks its stage
tasks, makes sure the collection exists and starts its metrics; every step after that (plan, prepare, write, delete
vanished, upkeep) takes this one frozen object instead of a row of positional arguments. A step that changes the run
(a collection that cannot hold BM25 vectors stays dense-only) returns a new context.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from docingest.core.embed import LoadedModel
from docingest.core.metrics import RunMetrics
from docingest.core.plan import Profile
from docingest.core.sources import Source
from docingest.core.store import QdrantLocation
from docingest.flows.runspec import RunSpec
from docingest.options import IngestOptions
from docingest.tasks.stages import Stages

if TYPE_CHECKING:
    from distributed import Client


@dataclass(frozen=True)
class RunContext:
    spec: RunSpec  # what the run is
    stages: Stages  # its stage tasks (tagged or not, the parse cache's storage)
    metrics: RunMetrics  # what it measures (pushed to a Pushgateway when one is set)
    physical: str  # the physical collection behind the alias when the run began: the run finishes there
    cluster: Client | None = None  # the Dask cluster that parses, chunks and embeds (None: this process does)

    @property
    def collection(self) -> str:
        return self.spec.collection

    @property
    def location(self) -> QdrantLocation:
        return self.spec.location

    @property
    def source(self) -> Source:
        return self.spec.source

    @property
    def model(self) -> LoadedModel:
        return self.spec.model

    @property
    def profile(self) -> Profile:
        return self.spec.profile

    @property
    def options(self) -> IngestOptions:
        return self.spec.options

    def with_profile(self, profile: Profile) -> RunContext:
        return dataclasses.replace(self, spec=dataclasses.replace(self.spec, profile=profile))
