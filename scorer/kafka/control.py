"""The deployment record on the compacted `scorer-control` topic: publish it, read it once, or follow it
in a thread (control_watcher) that loads the models of each new deployment, ready to swap in."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from scorer.config import Settings
from scorer.errors import ModelError, ScorerError
from scorer.kafka import clients
from scorer.kafka.artefacts import cache_root, fetch_model
from scorer.kafka.compacted import CompactedWatcher, read_compacted
from scorer.kafka.tables import TopicReader
from scorer.model.onnx import OnnxModel
from scorer.model.registry import Registry
from scorer.policy.actions import PolicyError
from scorer.rollout.deployment import DEPLOYMENT_KEY, RETRAIN_KEY, Deployment, RetrainSwitch
from scorer.rollout.serving import Serving
from scorer.runtime.metrics import Metrics

logger = logging.getLogger(__name__)


def publish(settings: Settings, deployment: Deployment, timeout_s: float = 10.0) -> None:
    """Write the deployment and wait for the broker to acknowledge it."""
    _publish(settings, DEPLOYMENT_KEY, deployment.to_json(), timeout_s)


def publish_retrain_switch(settings: Settings, switch: RetrainSwitch, timeout_s: float = 10.0) -> None:
    """Write the retrain kill switch (`scorer retrain pause|resume`) and wait for the acknowledgement."""
    _publish(settings, RETRAIN_KEY, switch.to_json(), timeout_s)


def _publish(settings: Settings, key: bytes, value: bytes, timeout_s: float) -> None:
    """One record on the control topic, acknowledged; ScorerError when the broker refuses or times out."""
    producer = clients.producer(settings.producer_config())
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer.produce(settings.control_topic, value, key, on_delivery=delivered)
    if producer.flush(timeout_s) != 0 or failures:
        raise ScorerError(f"could not publish to {settings.control_topic}: {failures or 'timed out'}")


def read_deployment(settings: Settings, timeout_s: float = 10.0) -> Deployment | None:
    """The newest deployment on the control topic, or None when nothing was ever published."""
    return read_control(settings, timeout_s)[0]


def read_control(
    settings: Settings, timeout_s: float = 10.0
) -> tuple[Deployment | None, RetrainSwitch | None]:
    """The newest deployment and retrain switch on the control topic (None: never published)."""
    table = read_compacted(settings, settings.control_topic, timeout_s)
    deployment, switch = table.get(DEPLOYMENT_KEY), table.get(RETRAIN_KEY)
    return (
        Deployment.from_json(deployment) if deployment else None,
        RetrainSwitch.from_json(switch) if switch else None,
    )


def control_watcher(
    settings: Settings, threads: int, initial: Serving, metrics: Metrics
) -> CompactedWatcher[Deployment | None, Serving]:
    """The watcher of `scorer-control`: each new deployment, models loaded, as a Serving to swap in. A model
    the registry does not have is fetched from `scorer-models` (kafka/artefacts.py) into the cache."""
    config = settings.consumer_config(group=f"{settings.group}-control", background=True)

    def fetch(label: str) -> Path:
        return fetch_model(settings, label, cache_root(settings))

    loader = DeploymentLoader(Registry(Path(settings.registry)), threads, initial, fetch)
    return CompactedWatcher(
        "control",
        lambda: TopicReader(config, settings.control_topic),
        parse_deployment,
        loader.build,
        metrics,
    )


def parse_deployment(key: bytes, value: bytes) -> Deployment | None:
    """The deployment a control record holds (None for the retrain switch, which is not the scorers'
    business); ScorerError when it is unreadable or under an unknown key."""
    if key == RETRAIN_KEY:
        return None
    if key != DEPLOYMENT_KEY:
        raise ScorerError(f"unknown key {key.decode('utf-8', 'replace')!r} on the control topic")
    return Deployment.from_json(value)


class DeploymentLoader:
    """Builds the Serving of a deployment. Loaded models are kept only while the newest deployment built
    names them: one named again later is loaded from the registry again. A model the registry does not
    have is asked of `fetch` (label -> its version directory, ModelError when it cannot be had), when given:
    the models topic, in a scorer without the registry's disk."""

    def __init__(
        self,
        registry: Registry,
        threads: int,
        initial: Serving,
        fetch: Callable[[str], Path] | None = None,
    ) -> None:
        self.registry = registry
        self.fetch = fetch
        self.threads = threads
        self.models: dict[str, OnnxModel] = {initial.champion.label: initial.champion}
        self.running = initial.champion.meta.feature_config  # what the scorer's state was built for

    def build(self, table: Mapping[bytes, Deployment | None]) -> Serving | None:
        """The Serving of the deployment in `table` (None when there is none). ScorerError when a model
        cannot be loaded (nor fetched, or its fetched bundle fails verification), its windows or label
        delay differ from what this scorer's state was built for, or the policy cannot be resolved on it:
        the models in use then stay."""
        deployment = table.get(DEPLOYMENT_KEY)
        if deployment is None:
            return None
        loaded: dict[str, OnnxModel] = {}  # this deployment's models, from the cache or the registry
        try:
            champion = self._load(deployment.champion, loaded)
            plan = deployment.plan
            challenger = self._load(plan.challenger, loaded) if plan else None
            serving = Serving(champion, challenger, plan, deployment.policy)
            for model in loaded.values():
                serving.bands(model)  # a band this model cannot resolve is refused here, not mid-batch
        except (OSError, PolicyError) as exc:
            raise ScorerError(f"deployment {deployment.champion}: {exc}") from exc
        self.models = loaded  # the models of earlier deployments go (the loop drops its own on adopt)
        logger.info("deployment_loaded", extra={"serving": serving.label})
        return serving

    def _load(self, label: str, loaded: dict[str, OnnxModel]) -> OnnxModel:
        model = loaded.get(label) or self.models.get(label)
        if model is None:
            model = OnnxModel(self._locate(label), threads=self.threads)
        why = self.running.state_difference(model.meta.feature_config)
        if why is not None:
            raise ScorerError(f"{label} cannot be served by this scorer: {why}")
        loaded[label] = model
        return model

    def _locate(self, label: str) -> Path:
        """The version's directory: in the registry, else fetched (ModelError from either when neither has
        it; the registry's error when there is nothing to fetch from)."""
        try:
            return self.registry.get(label).path
        except ModelError:
            if self.fetch is None:
                raise
        logger.info("model_fetch", extra={"model": label})
        return self.fetch(label)
